//! The async-rs reactor lapin runs on: tokio's, except that the TCP streams
//! it connects are [`Socket`]s.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use async_rs::{Tokio, traits::Reactor};
use futures_io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;

use super::{Socket, Wait};

/// An async-rs reactor that is tokio's in everything but its TCP streams,
/// which are [`Socket`]s.
#[derive(Clone, Debug)]
pub struct SocketReactor {
    tokio: Tokio,
    handle: Handle,
    wait: Wait,
}

impl SocketReactor {
    /// Bound to the runtime this is called from.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current(wait: Wait) -> Self {
        SocketReactor {
            tokio: Tokio::current(),
            handle: Handle::current(),
            wait,
        }
    }
}

impl Reactor for SocketReactor {
    type TcpStream = Socket;
    type Sleep = <Tokio as Reactor>::Sleep;

    /// lapin never registers a handle of its own: it reaches the network only
    /// through [`Reactor::tcp_connect_addr`].
    fn register<H: Read + Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Err::<Socket, _>(io::Error::other(
            "SocketReactor registers only the sockets it connects",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.tokio.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures_util::Stream<Item = Instant> + Send + 'static {
        self.tokio.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Socket>> + Send + 'static {
        let (handle, wait) = (self.handle.clone(), self.wait.clone());
        async move {
            // Connected through tokio (lapin polls this under the runtime's
            // `block_on`), then taken off the reactor: it stays non-blocking.
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Socket::new(stream.into_std()?, handle, wait)
        }
    }
}
