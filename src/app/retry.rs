//! Attempts at one step of the worker's life, with capped exponential backoff
//! and full jitter between them, so that replicas that lost the broker (or the
//! database) together do not come back together.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RunError;
use crate::config::Settings;

/// Attempts at one step (bootstrap, or a broker connection's life), with capped
/// exponential backoff and full jitter between them.
pub(super) struct Retry<'a> {
    settings: &'a Settings,
    shutdown: &'a CancellationToken,
    step: &'static str,
    attempts: u32,
}

impl<'a> Retry<'a> {
    pub(super) fn new(
        settings: &'a Settings,
        shutdown: &'a CancellationToken,
        step: &'static str,
    ) -> Self {
        Retry {
            settings,
            shutdown,
            step,
            attempts: 0,
        }
    }

    /// The step made progress (connected and consuming): the budget starts over.
    pub(super) fn reset(&mut self) {
        self.attempts = 0;
    }

    /// After a failure: the error back when it is final (not transient, the
    /// budget is spent, or shutdown was requested while failing), else waits
    /// and answers whether to try again (false: shutdown came during the wait).
    pub(super) async fn after(&mut self, error: RunError) -> Result<bool, RunError> {
        if self.shutdown.is_cancelled() || !error.is_transient() {
            return Err(error);
        }
        self.attempts += 1;
        let max = self.settings.reconnect_max;
        if max != 0 && self.attempts > max {
            return Err(RunError::RetriesExhausted {
                attempts: self.attempts,
                last: Box::new(error),
            });
        }
        let delay = backoff(self.attempts);
        metrics::counter!("wfm_reconnects_total", "step" => self.step).increment(1);
        tracing::warn!(step = self.step, attempt = self.attempts, delay_ms = delay.as_millis() as u64, error = %error, "failed; trying again");
        tokio::select! {
            () = self.shutdown.cancelled() => Ok(false),
            () = tokio::time::sleep(delay) => Ok(true),
        }
    }
}

/// 0.5 s doubling to 30 s, each delay drawn between half and all of it so that
/// replicas that lost the broker together do not reconnect together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500).saturating_mul(1 << attempt.saturating_sub(1).min(6));
    let ceiling = ceiling.min(Duration::from_secs(30));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_30_second_cap_with_jitter() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let later = backoff(4);
            assert!(later >= Duration::from_secs(2) && later <= Duration::from_secs(4));
            assert!(
                backoff(30) <= Duration::from_secs(30) && backoff(30) >= Duration::from_secs(15)
            );
        }
    }
}
