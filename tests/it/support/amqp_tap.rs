//! A proxy in front of the broker that records the acknowledgement frames the
//! worker sends (`basic.ack`, `basic.reject`, `basic.nack`), and its closes
//! (`channel.close`, `connection.close`), in the order each connection sent
//! them, and counts the deliveries the broker sent, so a test can see which
//! one the worker chose — the difference RabbitMQ 4.3 makes in counting
//! deliveries, which the local 3.x broker does not show. It can also play a
//! broker that stops answering: from a chosen method frame on, nothing the
//! client sends reaches the broker, for ever or until the test releases it
//! (a broker that answers late).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf},
    sync::watch,
};

/// One acknowledgement or close frame, as sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub method: Method,
    /// Which of the client's connections (in the order the tap accepted them).
    pub connection: usize,
    pub channel: u16,
    pub delivery_tag: u64,
    pub multiple: bool,
    pub requeue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ack,
    Reject,
    Nack,
    /// `channel.close` (on its channel) or `connection.close` (channel 0).
    Close,
}

pub struct AmqpTap {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Ack>>>,
    held: Arc<AtomicBool>,
    delivered: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

/// Where a tap holds a client's frames, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub method: MethodId,
    /// Held from the `nth` such frame on a connection (1: the first).
    pub nth: usize,
    /// Until [`AmqpTap::release`] (then forwarded, in order), or for ever.
    pub until_released: bool,
}

/// How many `basic.nack(requeue)` frames are among `acks`.
pub fn requeued_nacks(acks: &[Ack]) -> usize {
    acks.iter()
        .filter(|a| a.method == Method::Nack && a.requeue)
        .count()
}

/// A method frame: class and method ids (AMQP 0-9-1 §1.2).
pub type MethodId = (u16, u16);

/// `queue.declare`.
pub const QUEUE_DECLARE: MethodId = (50, 10);
/// `basic.consume`.
pub const BASIC_CONSUME: MethodId = (60, 20);

impl AmqpTap {
    pub async fn start(target: SocketAddr) -> AmqpTap {
        Self::start_holding(target, None).await
    }

    /// From the first `hold` method frame a client sends on, that client's
    /// bytes go nowhere: the broker never answers it.
    pub async fn start_holding(target: SocketAddr, hold: Option<MethodId>) -> AmqpTap {
        let hold = hold.map(|method| Hold {
            method,
            nth: 1,
            until_released: false,
        });
        Self::start_with(target, hold).await
    }

    /// From the held frame on, a client's frames wait in the tap (those
    /// before it go on) until [`Self::release`], or for ever.
    pub async fn start_with(target: SocketAddr, hold: Option<Hold>) -> AmqpTap {
        let (release, released) = watch::channel(false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicUsize::new(0));
        let (recorded, holding, counted) = (seen.clone(), held.clone(), delivered.clone());
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((client, _)) = listener.accept().await {
                connection += 1;
                let parser = Parser {
                    connection,
                    hold,
                    held: holding.clone(),
                    ..Parser::default()
                };
                let released = released.clone();
                let deliveries = Deliveries {
                    pending: Vec::new(),
                    count: counted.clone(),
                };
                tokio::spawn(forward(
                    client,
                    target,
                    recorded.clone(),
                    parser,
                    deliveries,
                    released,
                ));
            }
        });
        AmqpTap {
            addr,
            seen,
            held,
            delivered,
            release,
        }
    }

    /// Lets frames held until released go on to the broker.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// How many `basic.deliver` frames the broker has sent through the tap,
    /// on every connection. A delivery counted here is on its way to the
    /// client: a `basic.cancel` the client sends from now on is answered after
    /// it. (The broker's own counts, a queue's ready messages, fall to 0 a
    /// moment before the frames go out.)
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }

    /// Whether a client has sent the held method.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Every acknowledgement frame seen so far.
    pub fn acks(&self) -> Vec<Ack> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|a| a.method != Method::Close)
            .copied()
            .collect()
    }

    /// Every acknowledgement and close frame seen so far.
    pub fn acks_and_closes(&self) -> Vec<Ack> {
        self.seen.lock().unwrap().clone()
    }
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    seen: Arc<Mutex<Vec<Ack>>>,
    mut parser: Parser,
    mut deliveries: Deliveries,
    mut released: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Some(n) = next_chunk(&mut server_read, &mut buffer).await {
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            deliveries.feed(&buffer[..n]);
        }
    };
    let upstream = async {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut outgoing = Vec::new();
        while let Some(n) = next_chunk(&mut client_read, &mut buffer).await {
            let held_from = parser.feed(&buffer[..n], &seen, &mut outgoing);
            if let Some(at) = held_from {
                // Frame by frame: what came before the held frame goes on.
                if server_write.write_all(&outgoing[..at]).await.is_err() {
                    break;
                }
                outgoing.drain(..at);
            }
            if parser.holding {
                if !parser.hold.is_some_and(|h| h.until_released)
                    || released.wait_for(|r| *r).await.is_err()
                {
                    // Held for ever (or the tap is gone): nothing more goes on.
                    outgoing.clear();
                    continue;
                }
                parser.holding = false;
                parser.hold = None;
            }
            if server_write.write_all(&outgoing).await.is_err() {
                break;
            }
            outgoing.clear();
        }
        let _ = server_write.shutdown().await;
    };
    tokio::select! {
        () = downstream => {}
        () = upstream => {}
    }
}

/// The length of the next chunk read into `buffer`; `None` once the stream
/// has ended or failed.
async fn next_chunk(reader: &mut OwnedReadHalf, buffer: &mut [u8]) -> Option<usize> {
    match reader.read(buffer).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Counts `basic.deliver` (class 60, method 60) in the broker's byte stream,
/// which has no protocol header.
struct Deliveries {
    pending: Vec<u8>,
    count: Arc<AtomicUsize>,
}

impl Deliveries {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(frame) = next_frame(&mut self.pending) {
            if frame[0] == 1 && frame.len() >= 12 && frame[7..11] == [0, 60, 0, 60] {
                self.count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Takes the next whole frame (AMQP 0-9-1 §4.2.3: type, channel, size,
/// payload, 0xCE) off the front of `pending`, if it has arrived.
fn next_frame(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let size = u32::from_be_bytes(pending.get(3..7)?.try_into().unwrap()) as usize;
    let end = 7 + size + 1;
    (pending.len() >= end).then(|| pending.drain(..end).collect())
}

/// Splits the client's byte stream into frames ([`next_frame`]), after the
/// 8-byte protocol header.
#[derive(Default)]
struct Parser {
    connection: usize,
    pending: Vec<u8>,
    header_seen: bool,
    hold: Option<Hold>,
    /// How many frames of the held method this connection sent.
    seen_of_held: usize,
    /// This connection sent the held frame: nothing more is forwarded (until released).
    holding: bool,
    /// Any connection did.
    held: Arc<AtomicBool>,
}

impl Parser {
    /// Parses `bytes`, appending each whole frame (and the protocol header) to
    /// `outgoing`; where the held frame begins in `outgoing`, if it came now.
    fn feed(
        &mut self,
        bytes: &[u8],
        seen: &Mutex<Vec<Ack>>,
        outgoing: &mut Vec<u8>,
    ) -> Option<usize> {
        self.pending.extend_from_slice(bytes);
        if !self.header_seen {
            if self.pending.len() < 8 {
                return None;
            }
            outgoing.extend(self.pending.drain(..8));
            self.header_seen = true;
        }
        let mut held_from = None;
        while let Some(frame) = next_frame(&mut self.pending) {
            let size = frame.len() - 8;
            let starts_at = outgoing.len();
            outgoing.extend_from_slice(&frame);
            if frame[0] == 1 {
                let id = (
                    u16::from_be_bytes([frame[7], frame[8]]),
                    u16::from_be_bytes([frame[9], frame[10]]),
                );
                if let Some(hold) = self.hold.filter(|h| h.method == id && !self.holding) {
                    self.seen_of_held += 1;
                    if self.seen_of_held == hold.nth {
                        self.holding = true;
                        self.held.store(true, Ordering::SeqCst);
                        held_from = Some(starts_at);
                    }
                }
                let channel = u16::from_be_bytes([frame[1], frame[2]]);
                if let Some(ack) = ack(self.connection, channel, &frame[7..7 + size]) {
                    seen.lock().unwrap().push(ack);
                }
            }
        }
        held_from
    }
}

/// basic (class 60): ack = 80, reject = 90, nack = 120; then the delivery
/// tag (u64) and a bit octet (multiple = bit 0; requeue = bit 0 of reject,
/// bit 1 of nack). Closes: `connection.close` (10, 50), `channel.close` (20, 40).
fn ack(connection: usize, channel: u16, payload: &[u8]) -> Option<Ack> {
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    if matches!((class, method), (10, 50) | (20, 40)) {
        return Some(Ack {
            method: Method::Close,
            connection,
            channel,
            delivery_tag: 0,
            multiple: false,
            requeue: false,
        });
    }
    if class != 60 || payload.len() < 13 {
        return None;
    }
    let delivery_tag = u64::from_be_bytes(payload[4..12].try_into().unwrap());
    let bits = payload[12];
    let (method, multiple, requeue) = match method {
        80 => (Method::Ack, bits & 1 != 0, false),
        90 => (Method::Reject, false, bits & 1 != 0),
        120 => (Method::Nack, bits & 1 != 0, bits & 2 != 0),
        _ => return None,
    };
    Some(Ack {
        method,
        connection,
        channel,
        delivery_tag,
        multiple,
        requeue,
    })
}
