//! Graceful shutdown.
//!
//! Order, on SIGTERM or SIGINT (the root token is cancelled):
//! 1. each queue task stops taking deliveries (the `select!` checks the token
//!    first) and cancels its consumer;
//! 2. the batch in hand finishes: its rows commit and it is acked (or its
//!    dead-letter copies are confirmed) — a batch is never cut in the middle;
//! 3. each channel closes, handing deliveries still buffered in the client back
//!    to the broker unacked (they are redelivered, to this worker or another);
//! 4. the connection closes and the process exits 0.
//!
//! All of it must happen within the shutdown timeout (30 s by default); past it
//! the tasks are abandoned and the process exits non-zero. Nothing is lost even
//! then: whatever was not acked is redelivered.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Failing to install a handler means the runtime has no signal driver: a bug.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
