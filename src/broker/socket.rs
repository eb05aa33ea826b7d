//! The consuming connection's TCP socket, read by lapin's I/O thread with
//! fewer thread hand-offs than lapin's tokio transport.
//!
//! lapin runs each connection's I/O on a thread of its own. With tokio's
//! `TcpStream`, that thread may read only when the runtime's reactor says the
//! socket is ready: each time it drains the socket it registers a waker and
//! sleeps, a runtime thread wakes in `epoll_wait` when the next bytes arrive,
//! and wakes lapin's thread in turn through a channel. During a backlog that
//! is a round of two wakes per few deliveries (BENCHMARKS.md, "The I/O thread
//! waits on its own socket").
//!
//! With [`Wait::Own`], lapin's thread waits on the socket itself, for a short
//! while ([`SHORT_WAIT`]), and only then falls back to the reactor. The kernel
//! wakes it directly: while some reader takes deliveries in bulk ([`Pace`]),
//! once a chunk ([`LOW_WATER`] bytes) has arrived rather than once per
//! segment; otherwise as soon as anything arrives. While it reads this way
//! the socket is not registered with the reactor, so the runtime's threads
//! are not woken for it. A reader idle for longer (low load, a paused
//! consumer, heartbeats only) registers, with the low-water mark at one byte,
//! and is woken by the reactor as before. The short wait never happens on a
//! runtime thread. [`Wait::Reactor`] is tokio's transport as it was, for the
//! connections that mostly wait on their own writes (dead-letter copies,
//! publishing).

use std::{
    io::{self, IoSlice, Read, Write},
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_io::{AsyncRead, AsyncWrite};
use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    io::Errno,
    net::{Shutdown, shutdown},
};
use tokio::{net::TcpStream, runtime::Handle};

mod pace;
mod reactor;
pub use pace::{InBulk, Pace};
pub use reactor::SocketReactor;

/// How long lapin's thread waits on the socket itself before it reads what
/// has come (if anything) or registers with the reactor. Frames queued
/// meanwhile (acks: the thread writes only between reads) wait at most this
/// long, and so does a message at moderate load. 1 ms held acks back long
/// enough to slow a backlog's drain (BENCHMARKS.md).
pub const SHORT_WAIT: Duration = Duration::from_micros(200);

/// How much input wakes lapin's thread from its own wait (SO_RCVLOWAT) while
/// deliveries are taken in bulk: about seven checkins. Each wake costs the
/// thread a parse and a hand-off of what it read; without the mark a backlog
/// woke it for every segment and spent on wakes what the runtime's threads
/// saved.
pub const LOW_WATER: usize = 16 * 1024;

/// Who waits for the socket's input.
#[derive(Clone, Debug)]
pub enum Wait {
    /// lapin's thread, briefly, then the reactor: for the consuming connection,
    /// at the pace its readers take deliveries.
    Own(Pace),
    /// tokio's reactor, always.
    Reactor,
}

/// A non-blocking TCP stream that waits for input on its own first (see the
/// module docs), then through tokio's reactor.
#[derive(Debug)]
pub struct Socket {
    stream: Stream,
    handle: Handle,
    wait: Wait,
    /// The last read found nothing and returned `Pending` with its waker
    /// already woken, so that lapin handles what it read before it waits.
    yielded: bool,
    /// The last read returned less than it was offered: the socket is
    /// (most likely) empty, and the next read can skip asking.
    drained: bool,
    /// A write found the send buffer full and waits through the reactor:
    /// the registration must outlive that wait.
    write_waiting: bool,
    /// The socket's SO_RCVLOWAT as last set.
    low_water: usize,
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
    fn new(stream: std::net::TcpStream, handle: Handle, wait: Wait) -> io::Result<Self> {
        let mut socket = Socket {
            stream: Stream::Direct(stream),
            handle,
            wait,
            yielded: false,
            drained: false,
            write_waiting: false,
            low_water: 1,
        };
        match socket.wait {
            Wait::Own(_) => socket.pace_low_water()?,
            Wait::Reactor => drop(socket.registered()?),
        }
        Ok(socket)
    }

    fn set_low_water(&mut self, bytes: usize) -> io::Result<()> {
        if bytes == self.low_water {
            return Ok(());
        }
        match &self.stream {
            Stream::Direct(stream) => set_receive_low_water(stream, bytes)?,
            _ => return Err(lost()),
        }
        self.low_water = bytes;
        Ok(())
    }

    /// The mark for lapin's thread waiting on its own: a chunk while some
    /// reader takes deliveries in bulk, the first byte otherwise (see [`Pace`]).
    fn pace_low_water(&mut self) -> io::Result<()> {
        let bytes = match &self.wait {
            Wait::Own(pace) if pace.bulk() => LOW_WATER,
            _ => 1,
        };
        self.set_low_water(bytes)
    }

    /// Notes whether a read of `read` bytes, offered `offered`, left the
    /// socket empty.
    fn took(&mut self, read: usize, offered: usize) -> usize {
        self.drained = read < offered;
        read
    }

    fn registered(&mut self) -> io::Result<&TcpStream> {
        if let Stream::Direct(_) = self.stream {
            // The reactor must hear of a lone message at once (a socket that
            // never waits on its own is at one byte already: no call).
            self.set_low_water(1)?;
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

    /// Off the reactor again, with the mark its pace asks for: only a socket
    /// that waits on its own ([`Wait::Own`]) comes here.
    fn deregister(&mut self) -> io::Result<()> {
        if let Stream::Registered(_) = self.stream {
            let Stream::Registered(registered) =
                std::mem::replace(&mut self.stream, Stream::Moving)
            else {
                unreachable!("matched above");
            };
            self.stream = Stream::Direct(registered.into_std()?);
            self.pace_low_water()?;
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

    /// Waits up to [`SHORT_WAIT`] for input: a chunk or the first byte, as
    /// the readers' pace asks. Never on a runtime thread: there it would hold
    /// up every task of that thread.
    fn wait_briefly(&mut self) -> io::Result<()> {
        if Handle::try_current().is_ok() {
            return Ok(());
        }
        self.pace_low_water()?;
        let Stream::Direct(stream) = &self.stream else {
            return Ok(());
        };
        let mut fds = [PollFd::new(stream, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: SHORT_WAIT.subsec_nanos().into(),
        };
        match poll(&mut fds, Some(&timeout)) {
            // Whatever came, if anything, is read next; a signal ends the
            // wait early, which is harmless.
            Ok(_) | Err(Errno::INTR) => Ok(()),
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
                if matches!(this.wait, Wait::Own(_)) && !this.write_waiting {
                    this.deregister()?;
                }
                return Poll::Ready(Ok(this.took(read, buf.len())));
            }
            if this.yielded {
                // lapin has handled what it read: wait for more, briefly
                // here, then through the reactor.
                this.yielded = false;
                this.wait_briefly()?;
                if let Some(read) = this.read_now(buf)? {
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
        let shut = match &self.stream {
            Stream::Direct(stream) => shutdown(stream, Shutdown::Write),
            Stream::Registered(stream) => shutdown(stream, Shutdown::Write),
            Stream::Moving => return Poll::Ready(Err(lost())),
        };
        Poll::Ready(shut.map_err(io::Error::from))
    }
}

/// SO_RCVLOWAT: the socket is readable, to `poll` and `epoll` alike, only once
/// `bytes` are queued (a read that does not wait still returns what there is).
/// Linux honours it for TCP in both; where a kernel ignored it, each wait
/// would end at the first byte, as without it.
fn set_receive_low_water(stream: &std::net::TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(io::Error::other)?;
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("an int's size fits socklen_t");
    // SAFETY: `stream` keeps the descriptor open for the call; the option
    // value is a c_int on the stack, outliving the call, and `size` is its
    // size, as SO_RCVLOWAT takes (socket(7)). The kernel only reads it.
    #[allow(unsafe_code)]
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&value).cast(),
            size,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
