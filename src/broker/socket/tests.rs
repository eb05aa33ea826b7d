//! The socket against a real peer on loopback, polled from a plain thread as
//! lapin's I/O thread polls it, with a waker that counts and reports.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream as PeerStream},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant},
};

use async_rs::traits::Reactor;
use futures_io::{AsyncRead, AsyncWrite};
use rustix::io::ioctl_fionread;

use super::{LOW_WATER, Pace, SHORT_WAIT, Socket, SocketReactor, Stream, Wait};

/// Longest a test waits for the reactor to wake the reader.
const DEADLINE: Duration = Duration::from_secs(5);

/// What lapin's thread has: a waker that tells it to poll again.
struct Wakes {
    count: AtomicUsize,
    woken: std::sync::Mutex<mpsc::Sender<()>>,
}

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.count.fetch_add(1, Ordering::SeqCst);
        let _ = self.woken.lock().expect("not poisoned").send(());
    }
}

struct Reader {
    socket: Socket,
    peer: PeerStream,
    wakes: Arc<Wakes>,
    woken: mpsc::Receiver<()>,
    /// The readers' pace the socket waits at (a socket that waits on its own).
    pace: Pace,
    /// Drives the reactor and owns the runtime the socket was connected on.
    runtime: tokio::runtime::Runtime,
}

impl Reader {
    /// A socket connected to a peer on loopback, on a runtime of its own
    /// whose thread drives the reactor; the test's thread is not a runtime
    /// thread, as lapin's is not.
    fn connected() -> Reader {
        Reader::waiting(Wait::Own(Pace::default()))
    }

    fn waiting(wait: Wait) -> Reader {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let pace = match &wait {
            Wait::Own(pace) => pace.clone(),
            Wait::Reactor => Pace::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let socket = runtime
            .block_on(async { SocketReactor::current(wait).tcp_connect_addr(addr).await })
            .expect("connected");
        let (peer, _) = listener.accept().expect("accepted");
        let (sender, woken) = mpsc::channel();
        let wakes = Arc::new(Wakes {
            count: AtomicUsize::new(0),
            woken: std::sync::Mutex::new(sender),
        });
        Reader {
            socket,
            peer,
            wakes,
            woken,
            pace,
            runtime,
        }
    }

    /// A socket that has read the peer's first bytes and yielded: lapin's
    /// thread about to wait for more.
    fn after_a_first_read() -> Reader {
        let mut reader = Reader::connected();
        reader.send(b"first");
        reader.read_then_yield(b"first");
        reader
    }

    fn send(&self, bytes: &[u8]) {
        (&self.peer).write_all(bytes).expect("sent");
    }

    fn waker(&self) -> Waker {
        Waker::from(self.wakes.clone())
    }

    fn read(&mut self, buf: &mut [u8]) -> Poll<usize> {
        let waker = self.waker();
        Pin::new(&mut self.socket)
            .poll_read(&mut Context::from_waker(&waker), buf)
            .map(|read| read.expect("the read succeeds"))
    }

    fn write(&mut self, buf: &[u8]) -> Poll<usize> {
        let waker = self.waker();
        Pin::new(&mut self.socket)
            .poll_write(&mut Context::from_waker(&waker), buf)
            .map(|written| written.expect("the write succeeds"))
    }

    fn woken_by_the_reactor(&self, when: &str) {
        self.woken
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the reactor wakes the socket's user {when}"));
    }

    fn wakes(&self) -> usize {
        self.wakes.count.load(Ordering::SeqCst)
    }

    fn on_the_reactor(&self) -> bool {
        matches!(self.socket.stream, Stream::Registered(_))
    }

    /// Until `bytes` of what the peer sent have arrived (loopback may deliver
    /// them a little after the peer's write returns).
    fn wait_for_bytes(&self, bytes: usize) {
        let Stream::Direct(stream) = &self.socket.stream else {
            panic!("off the reactor");
        };
        let started = Instant::now();
        while ioctl_fionread(stream).expect("FIONREAD") < bytes as u64 {
            assert!(started.elapsed() < DEADLINE, "{bytes} bytes never arrived");
            std::thread::yield_now();
        }
    }

    /// One read, which returns `expected`.
    fn reads(&mut self, expected: &[u8]) {
        let mut buf = [0u8; 64];
        assert_eq!(self.read(&mut buf), Poll::Ready(expected.len()));
        assert_eq!(&buf[..expected.len()], expected);
    }

    /// Reads `expected` and then the read that finds the socket empty:
    /// `Pending`, already woken, so that lapin parses before it waits.
    fn read_then_yield(&mut self, expected: &[u8]) {
        self.wait_for_bytes(expected.len());
        self.reads(expected);
        let mut buf = [0u8; 64];
        let wakes = self.wakes();
        assert_eq!(self.read(&mut buf), Poll::Pending);
        assert_eq!(self.wakes(), wakes + 1, "a yield wakes its reader at once");
    }
}

#[test]
fn input_that_is_there_when_the_reader_waits_is_read_without_the_reactor() {
    let mut reader = Reader::after_a_first_read();

    reader.send(b"second");
    reader.wait_for_bytes(6);
    reader.reads(b"second");
    assert!(!reader.on_the_reactor());
}

#[test]
fn a_reader_idle_past_the_short_wait_is_woken_by_the_reactor_and_leaves_it_after() {
    let mut reader = Reader::after_a_first_read();

    let wakes = reader.wakes();
    let mut buf = [0u8; 64];
    assert_eq!(reader.read(&mut buf), Poll::Pending);
    assert!(reader.on_the_reactor());
    assert_eq!(reader.wakes(), wakes, "nothing to read: not woken");
    while reader.woken.try_recv().is_ok() {}

    reader.send(b"later");
    reader.woken_by_the_reactor("when input arrives");
    reader.reads(b"later");
    assert!(!reader.on_the_reactor());
}

#[test]
fn a_write_into_a_full_send_buffer_resumes_when_the_peer_reads() {
    let mut reader = Reader::connected();
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0usize;
    while let Poll::Ready(written) = reader.write(&chunk) {
        sent += written;
        assert!(sent < 1 << 30, "the send buffer never filled");
    }
    assert!(reader.on_the_reactor());

    let mut peer = reader.peer.try_clone().expect("a second handle");
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0usize;
        while let Ok(read @ 1..) = peer.read(&mut buf) {
            received += read;
        }
        received
    });
    reader.woken_by_the_reactor("when the send buffer drains");
    let Poll::Ready(written) = reader.write(&chunk) else {
        panic!("writable once woken");
    };
    sent += written;

    let waker = reader.waker();
    let closed = Pin::new(&mut reader.socket).poll_close(&mut Context::from_waker(&waker));
    assert!(matches!(closed, Poll::Ready(Ok(()))));
    assert_eq!(draining.join().expect("the peer drained"), sent);
}

#[test]
fn on_a_runtime_thread_it_never_waits_itself() {
    let mut reader = Reader::connected();
    let handle = reader.runtime.handle().clone();
    let _runtime = handle.enter();
    let mut buf = [0u8; 64];
    let mut quickest = Duration::MAX;
    for _ in 0..5 {
        reader.send(b"input");
        reader.read_then_yield(b"input");
        let started = Instant::now();
        assert_eq!(reader.read(&mut buf), Poll::Pending);
        quickest = quickest.min(started.elapsed());
        assert!(reader.on_the_reactor(), "it waits through the reactor");
        reader.socket.deregister().expect("deregistered");
    }
    assert!(
        quickest < SHORT_WAIT,
        "a read on a runtime thread took {quickest:?}: it waited on the socket"
    );
}

#[test]
fn a_reader_waiting_on_its_own_wakes_for_a_chunk_not_for_each_small_write() {
    let mut reader = Reader::after_a_first_read();
    let _bulk = reader.pace.in_bulk();

    // Less than a chunk: the short wait runs out, then what came is read.
    reader.send(b"small");
    reader.wait_for_bytes(5);
    let mut buf = vec![0u8; 2 * LOW_WATER];
    let started = Instant::now();
    assert_eq!(reader.read(&mut buf), Poll::Ready(5));
    assert!(started.elapsed() >= SHORT_WAIT, "woken before a chunk came");
    assert!(!reader.on_the_reactor());

    // A chunk ends the wait at once.
    let chunk = vec![1u8; LOW_WATER];
    let mut quickest = Duration::MAX;
    for _ in 0..5 {
        assert_eq!(reader.read(&mut buf), Poll::Pending, "a yield");
        reader.send(&chunk);
        reader.wait_for_bytes(LOW_WATER);
        let started = Instant::now();
        assert_eq!(reader.read(&mut buf), Poll::Ready(LOW_WATER));
        quickest = quickest.min(started.elapsed());
    }
    assert!(
        quickest < SHORT_WAIT,
        "a chunk took {quickest:?} to end the wait"
    );
}

#[test]
fn a_socket_the_reactor_waits_for_behaves_as_tokios() {
    let mut reader = Reader::waiting(Wait::Reactor);
    assert!(reader.on_the_reactor());
    let mut buf = [0u8; 64];
    assert_eq!(reader.read(&mut buf), Poll::Pending);
    assert_eq!(reader.wakes(), 0, "no input: not woken");

    reader.send(b"input");
    reader.woken_by_the_reactor("when input arrives");
    assert_eq!(reader.read(&mut buf), Poll::Ready(5));
    assert!(reader.on_the_reactor(), "it stays registered");
}

#[test]
fn unless_deliveries_are_taken_in_bulk_any_input_ends_the_wait() {
    let mut reader = Reader::after_a_first_read();
    let mut buf = vec![0u8; 2 * LOW_WATER];
    let mut small_read_in = |reader: &mut Reader| {
        reader.send(b"small");
        reader.wait_for_bytes(5);
        let started = Instant::now();
        assert_eq!(reader.read(&mut buf), Poll::Ready(5));
        let took = started.elapsed();
        assert_eq!(reader.read(&mut buf), Poll::Pending, "a yield");
        took
    };

    let quickest = (0..5).map(|_| small_read_in(&mut reader)).min();
    assert!(
        quickest < Some(SHORT_WAIT),
        "no reader in bulk, yet small input took {quickest:?} to end the wait"
    );

    // A reader in bulk: small input waits out the short wait for a chunk.
    let bulk = reader.pace.in_bulk();
    assert!(
        small_read_in(&mut reader) >= SHORT_WAIT,
        "woken before a chunk came"
    );

    drop(bulk);
    let quickest = (0..5).map(|_| small_read_in(&mut reader)).min();
    assert!(
        quickest < Some(SHORT_WAIT),
        "out of bulk again, yet small input took {quickest:?} to end the wait"
    );
}
