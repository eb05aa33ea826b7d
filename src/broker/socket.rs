//! The broker's TCP socket, read by lapin's I/O thread with fewer thread
//! hand-offs than lapin's tokio transport.
//!
//! lapin runs each connection's I/O on a thread of its own. With tokio's
//! `TcpStream`, that thread may read only when the runtime's reactor says the
//! socket is ready: each time it drains the socket it registers a waker and
//! sleeps, a runtime thread wakes in `epoll_wait` when the next bytes arrive,
//! and wakes lapin's thread in turn through a channel. During a backlog that
//! is one round of two wakes per few deliveries, most of lapin's CPU and a
//! good part of the runtime's (BENCHMARKS.md, "The I/O thread waits on its
//! own socket").
//!
//! [`Socket`] lets lapin's thread wait on the socket itself, for a short
//! while ([`SHORT_WAIT`]), before it falls back to the reactor: the kernel
//! wakes it directly when the broker's next bytes arrive, and while it reads
//! this way the socket is not registered with the reactor at all, so the
//! runtime's threads are not woken for it. A reader that is idle for longer
//! (low load, a paused consumer, heartbeats only) registers as before and is
//! woken by the reactor. The short wait never happens on a runtime thread.

use std::{
    io::{self, IoSlice, Read, Write},
    net::{Shutdown, SocketAddr},
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use async_rs::{Tokio, traits::Reactor};
use futures_io::{AsyncRead, AsyncWrite};
use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    io::Errno,
};
use tokio::{net::TcpStream, runtime::Handle};

/// How long lapin's thread waits on the socket itself before it registers
/// with the reactor. It covers most gaps between the broker's writes during a
/// backlog; frames queued meanwhile (acks, publishes: the thread writes only
/// between reads) wait at most this long. 50 µs caught fewer of the gaps and
/// cost more CPU; 1 ms held acks back long enough to slow a backlog's drain
/// (BENCHMARKS.md).
pub const SHORT_WAIT: Duration = Duration::from_micros(200);

/// An async-rs reactor that is tokio's in everything but its TCP streams,
/// which are [`Socket`]s.
#[derive(Clone, Debug)]
pub struct SocketReactor {
    tokio: Tokio,
    handle: Handle,
}

impl SocketReactor {
    /// Bound to the runtime this is called from.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        SocketReactor {
            tokio: Tokio::current(),
            handle: Handle::current(),
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
        let handle = self.handle.clone();
        async move {
            // Connected through tokio (lapin polls this under the runtime's
            // `block_on`), then taken off the reactor: it stays non-blocking.
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Socket::new(stream.into_std()?, handle))
        }
    }
}

/// A non-blocking TCP stream that waits for input on its own first (see the
/// module docs), then through tokio's reactor.
#[derive(Debug)]
pub struct Socket {
    stream: Stream,
    handle: Handle,
    /// The last read found nothing and returned `Pending` with its waker
    /// already woken, so that lapin handles what it read before it waits.
    yielded: bool,
    /// The last read returned less than it was offered: the socket is
    /// (most likely) empty, and the next read can skip asking.
    drained: bool,
    /// A write found the send buffer full and waits through the reactor:
    /// the registration must outlive that wait.
    write_waiting: bool,
}

/// The socket, off the reactor or on it. Registering and deregistering are
/// one `epoll_ctl` each, paid only around a wait longer than [`SHORT_WAIT`].
#[derive(Debug)]
enum Stream {
    Direct(std::net::TcpStream),
    Registered(TcpStream),
    /// Only while moving between the two; a failed registration leaves it
    /// here, and every later use fails.
    Moving,
}

impl Socket {
    fn new(stream: std::net::TcpStream, handle: Handle) -> Self {
        Socket {
            stream: Stream::Direct(stream),
            handle,
            yielded: false,
            drained: false,
            write_waiting: false,
        }
    }

    /// Notes whether a read of `read` bytes, offered `offered`, left the
    /// socket empty.
    fn took(&mut self, read: usize, offered: usize) -> usize {
        self.drained = read < offered;
        read
    }

    fn registered(&mut self) -> io::Result<&TcpStream> {
        if let Stream::Direct(_) = self.stream {
            let Stream::Direct(direct) = std::mem::replace(&mut self.stream, Stream::Moving) else {
                unreachable!("matched above");
            };
            let _runtime = self.handle.enter();
            self.stream = Stream::Registered(TcpStream::from_std(direct)?);
        }
        match &self.stream {
            Stream::Registered(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    fn deregister(&mut self) -> io::Result<()> {
        if let Stream::Registered(_) = self.stream {
            let Stream::Registered(registered) =
                std::mem::replace(&mut self.stream, Stream::Moving)
            else {
                unreachable!("matched above");
            };
            self.stream = Stream::Direct(registered.into_std()?);
        }
        Ok(())
    }

    /// A read through the reactor's readiness; `None` when the readiness was
    /// stale (try again).
    fn poll_read_registered(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<Option<usize>>> {
        let stream = self.registered()?;
        ready!(stream.poll_read_ready(cx))?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(None)),
            read => Poll::Ready(read.map(Some)),
        }
    }

    /// A read that does not wait: `None` if nothing is there.
    fn read_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Stream::Direct(stream) = &self.stream else {
            return Err(lost());
        };
        loop {
            match (&*stream).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                read => return read.map(Some),
            }
        }
    }

    /// Whether the socket became readable within [`SHORT_WAIT`]. Never on a
    /// runtime thread: there it would hold up every task of that thread.
    fn wait_briefly(&self) -> io::Result<bool> {
        let Stream::Direct(stream) = &self.stream else {
            return Ok(false);
        };
        if Handle::try_current().is_ok() {
            return Ok(false);
        }
        let mut fds = [PollFd::new(stream, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: SHORT_WAIT.subsec_nanos().into(),
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => Ok(ready > 0),
            // A signal: look again at once.
            Err(Errno::INTR) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Stream::Registered(_) = this.stream {
                let Some(read) = ready!(this.poll_read_registered(cx, buf))? else {
                    continue;
                };
                if !this.write_waiting {
                    this.deregister()?;
                }
                return Poll::Ready(Ok(this.took(read, buf.len())));
            }
            if this.yielded {
                // lapin has handled what it read: wait for more, briefly
                // here, then through the reactor.
                this.yielded = false;
                if this.wait_briefly()?
                    && let Some(read) = this.read_now(buf)?
                {
                    return Poll::Ready(Ok(this.took(read, buf.len())));
                }
                this.registered()?;
                continue;
            }
            if !this.drained
                && let Some(read) = this.read_now(buf)?
            {
                return Poll::Ready(Ok(this.took(read, buf.len())));
            }
            // lapin reads until a read is pending, and parses only then:
            // yield once, woken already, so that it hands on what it read
            // (and writes what is queued) before this thread waits.
            this.drained = false;
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }
}

impl Socket {
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&std::net::TcpStream) -> io::Result<usize>,
        try_write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.write_waiting {
                let stream = self.registered()?;
                ready!(stream.poll_write_ready(cx))?;
                match try_write(stream) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    written => {
                        self.write_waiting = false;
                        return Poll::Ready(written);
                    }
                }
            }
            let written = match &self.stream {
                Stream::Direct(stream) => write(stream),
                Stream::Registered(stream) => try_write(stream),
                Stream::Moving => Err(lost()),
            };
            match written {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_waiting = true,
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(
            cx,
            |mut stream| stream.write(buf),
            |stream| stream.try_write(buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(
            cx,
            |mut stream| stream.write_vectored(bufs),
            |stream| stream.try_write_vectored(bufs),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.deregister()?;
        match &this.stream {
            Stream::Direct(stream) => Poll::Ready(stream.shutdown(Shutdown::Write)),
            _ => Poll::Ready(Err(lost())),
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket was lost registering it with the reactor",
    )
}

#[cfg(test)]
mod tests;
