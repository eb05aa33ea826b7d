//! A small TCP proxy between the worker and a service, that a test can cut and
//! restore — the way toxiproxy is used — so a fault hits this test's
//! connections only.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

struct State {
    up: bool,
    /// Cancelled on `cut`: every connection of the current generation ends.
    generation: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            up: true,
            generation: CancellationToken::new(),
        }));
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            state.clone(),
            shutdown.clone(),
        ));
        Proxy {
            addr,
            state,
            shutdown,
        }
    }

    /// Drops every open connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.up = false;
        state.generation.cancel();
        state.generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.state.lock().unwrap().up = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let generation = {
            let state = state.lock().unwrap();
            // Refused: the connection is closed at once, as a dead host would reset it.
            if !state.up {
                continue;
            }
            state.generation.clone()
        };
        tokio::spawn(forward(client, target, generation));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, generation: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        () = generation.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
