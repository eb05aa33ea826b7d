//! A TCP proxy in front of PostgreSQL that, once armed, withholds the server's
//! replies on a connection from the moment its client sends `BEGIN` until it
//! sends `COMMIT`. A client that waits for any reply inside its transaction
//! waits forever behind it: only a transaction sent whole, in one round trip,
//! commits through the gate.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// The simple-protocol queries the worker opens and ends a batch with
/// ('Q', the length, the text and its NUL).
const BEGIN: &[u8] = b"Q\0\0\0\x0aBEGIN\0";
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

pub struct Gate {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Shared {
    armed: AtomicBool,
    /// Transactions that went through while armed, BEGIN to COMMIT.
    passed: AtomicUsize,
    /// Wakes held replies when the gate is disarmed.
    disarmed: tokio::sync::Notify,
}

impl Gate {
    /// Listens on a free loopback port and forwards to `target`, disarmed.
    pub async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let shutdown = CancellationToken::new();
        let (gate, stop) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                if let Ok((client, _)) = accepted {
                    tokio::spawn(connection(client, target, gate.clone(), stop.clone()));
                }
            }
        });
        Gate {
            addr,
            shared,
            shutdown,
        }
    }

    pub fn arm(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Lets every held reply through, and all later ones.
    pub fn disarm(&self) {
        self.shared.armed.store(false, Ordering::SeqCst);
        self.shared.disarmed.notify_waiters();
    }

    /// Transactions committed through the armed gate.
    pub fn passed(&self) -> usize {
        self.shared.passed.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    gate: Arc<Shared>,
    stop: CancellationToken,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (in_transaction, watch) = watch::channel(false);
    tokio::select! {
        () = stop.cancelled() => {}
        () = requests(client_read, server_write, &gate, in_transaction) => {}
        () = replies(server_read, client_write, &gate, watch) => {}
    }
}

/// Forwards the client's bytes, noting each BEGIN and COMMIT before the
/// server can see (and answer) them.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    gate: &Shared,
    in_transaction: watch::Sender<bool>,
) {
    // A marker may straddle two reads: the last bytes of one are searched again
    // with the next, counting only matches that end in the new bytes.
    let keep = COMMIT.len().max(BEGIN.len()) - 1;
    let mut window = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let mut open = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let carried = window.len();
        window.extend_from_slice(&buf[..n]);
        for end in carried + 1..=window.len() {
            let seen = &window[..end];
            if seen.ends_with(BEGIN) {
                open = true;
            } else if seen.ends_with(COMMIT) {
                if open && gate.armed.load(Ordering::SeqCst) {
                    gate.passed.fetch_add(1, Ordering::SeqCst);
                }
                open = false;
            }
        }
        in_transaction.send_replace(open);
        window.drain(..window.len().saturating_sub(keep));
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Forwards the server's bytes, holding them while the gate is armed and the
/// client is inside a transaction.
async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    gate: &Shared,
    mut in_transaction: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let disarmed = gate.disarmed.notified();
            if !gate.armed.load(Ordering::SeqCst) || !*in_transaction.borrow_and_update() {
                break;
            }
            tokio::select! {
                () = disarmed => {}
                changed = in_transaction.changed() => if changed.is_err() { return },
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
