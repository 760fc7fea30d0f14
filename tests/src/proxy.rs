//! A UDP proxy that injects network faults between a client and one server.
//!
//! [`FaultProxy`] listens on a loopback port and forwards datagrams to one
//! upstream address and back. Each downstream source address gets its own
//! upstream socket, so the server sees one client per source and each reply
//! returns to the source that caused it (a NAT, in effect).
//!
//! Faults apply to both directions and can be changed at any time from the
//! test thread: drop with a probability, delay by a fixed time, or cut the
//! link completely (a partition). A datagram is judged when it arrives; a
//! delayed one is dropped on the way out if the link has been cut meanwhile.
//!
//! The proxy runs on plain threads with blocking sockets whose reads time
//! out every [`TICK`], so that they notice the stop flag; dropping the proxy
//! stops and joins them all, after which its ports are free again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a blocking read or wait lasts before a thread checks the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// Requested socket buffer size in bytes; the kernel caps it at
/// `net.core.[rw]mem_max`. QUIC at full speed overruns the 208 KiB default.
const SOCKET_BUFFER: usize = 8 << 20;
/// The largest UDP payload, in bytes.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams each direction's delay queue holds at most; more are dropped.
const QUEUE_LIMIT: usize = 10_000;
/// A session that has seen no datagram either way for this long is closed;
/// a later datagram from its source opens a new one on a new port.
const SESSION_IDLE: Duration = Duration::from_secs(60);

/// A UDP forwarder from a loopback port to one upstream address, with faults
/// that tests switch on and off. Stops its threads when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks a free one) and forwards every datagram
    /// to `upstream` and the replies back, with no faults until one is set.
    ///
    /// # Errors
    /// When the listen socket cannot be bound or configured, or a thread
    /// cannot be spawned.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(bind(listen)?);
        let addr = socket.local_addr()?;
        let shared = Arc::new(Shared::new(seed_for(addr, upstream)));
        let to_upstream = Arc::new(DelayLine::default());
        let to_downstream = Arc::new(DelayLine::default());
        let mut proxy = Self {
            addr,
            shared: shared.clone(),
            threads: Vec::new(),
        };
        // On an error below, dropping `proxy` stops what has started.
        for (name, line) in [
            ("fault-proxy-delay-up", &to_upstream),
            ("fault-proxy-delay-down", &to_downstream),
        ] {
            let (shared, line) = (shared.clone(), line.clone());
            proxy.threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run_delay_line(&shared, &line))?,
            );
        }
        let downstream = Downstream {
            shared,
            listen: socket,
            upstream,
            to_upstream,
            to_downstream,
        };
        proxy.threads.push(
            std::thread::Builder::new()
                .name("fault-proxy-down".into())
                .spawn(move || downstream.run())?,
        );
        Ok(proxy)
    }

    /// The address clients send to (the bound listen address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops each datagram, in either direction, with `probability`
    /// (0.0 = none, 1.0 = all). Values outside 0.0..=1.0 are clamped; NaN
    /// counts as 0.0. The draws come from a generator seeded by the proxy's
    /// addresses, so a run is repeatable up to thread timing.
    pub fn set_drop(&self, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.shared.drop_bits.store(p.to_bits(), Ordering::Relaxed);
    }

    /// Holds each datagram, in either direction, for `delay` before sending
    /// it on (so a round trip takes twice as long). Zero turns delay off.
    /// Delayed datagrams do not hold up each other; beyond 10 000 waiting in
    /// one direction, further ones are dropped.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// With `true`, drops every datagram, including delayed ones not yet
    /// sent: a network partition. `false` lets them through again, leaving
    /// other faults as they are.
    pub fn cut(&self, cut: bool) {
        self.shared.cut.store(cut, Ordering::Relaxed);
    }

    /// Clears every fault: no cut, no drops, no delay. Datagrams already
    /// waiting in a delay queue still go out when due.
    pub fn heal(&self) {
        self.cut(false);
        self.set_drop(0.0);
        self.set_delay(Duration::ZERO);
    }

    /// Datagrams sent on so far, both directions together. A datagram is
    /// counted before it is sent, so once a test has received it, it shows.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Datagrams discarded so far by a fault or a full delay queue, both
    /// directions together.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Every thread wakes within TICK; the downstream one joins the
        // session threads before it returns.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// State every thread of one proxy shares.
struct Shared {
    stop: AtomicBool,
    cut: AtomicBool,
    /// The drop probability, as `f64::to_bits`.
    drop_bits: AtomicU64,
    delay_nanos: AtomicU64,
    /// SplitMix64 state.
    rng: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    /// Reference point for `Session::last_active`.
    epoch: Instant,
}

impl Shared {
    fn new(seed: u64) -> Self {
        Self {
            stop: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            drop_bits: AtomicU64::new(0.0f64.to_bits()),
            delay_nanos: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends `datagram` now, queues it on `line`, or drops it, as the
    /// current faults say.
    fn forward(&self, line: &DelayLine, datagram: Datagram) {
        if !self.passes() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let delay = Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed));
        if delay.is_zero() {
            self.send(&datagram);
        } else if !line.push(Instant::now() + delay, datagram) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a datagram arriving now survives the cut and drop faults.
    fn passes(&self) -> bool {
        if self.cut.load(Ordering::Relaxed) {
            return false;
        }
        let p = f64::from_bits(self.drop_bits.load(Ordering::Relaxed));
        p <= 0.0 || self.uniform() >= p
    }

    /// A draw from [0, 1) (SplitMix64, Steele, Lea and Flood 2014; the
    /// atomic add makes concurrent draws distinct).
    fn uniform(&self) -> f64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .rng
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits, scaled: exactly representable, below 1.0.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn send(&self, datagram: &Datagram) {
        // Counted first, so that whoever receives the datagram already sees
        // it in `forwarded()`. A failed send (a full buffer, a vanished
        // peer) is a lost datagram, which UDP allows: uncounted again.
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if datagram
            .socket
            .send_to(&datagram.bytes, datagram.to)
            .is_err()
        {
            self.forwarded.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the proxy started.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One datagram on its way: the bytes, the socket to send them from and
/// the address to send them to.
struct Datagram {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// One direction's delayed datagrams, earliest due first.
#[derive(Default)]
struct DelayLine {
    queue: Mutex<DelayQueue>,
    /// Signalled when a datagram becomes the earliest due.
    earlier: Condvar,
}

#[derive(Default)]
struct DelayQueue {
    heap: BinaryHeap<Reverse<Delayed>>,
    /// Breaks ties between equal due times, keeping arrival order.
    next_seq: u64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl DelayLine {
    /// Queues `datagram` until `due`; false when the queue is full.
    fn push(&self, due: Instant, datagram: Datagram) -> bool {
        let mut q = self.lock();
        if q.heap.len() >= QUEUE_LIMIT {
            return false;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let earliest = q.heap.peek().is_none_or(|Reverse(first)| due < first.due);
        q.heap.push(Reverse(Delayed { due, seq, datagram }));
        drop(q);
        if earliest {
            self.earlier.notify_one();
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, DelayQueue> {
        // The queue holds no invariant a panicking holder could break.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends `line`'s datagrams as they fall due, until the proxy stops.
fn run_delay_line(shared: &Shared, line: &DelayLine) {
    let mut due = Vec::new();
    while !shared.stopped() {
        let mut q = line.lock();
        let now = Instant::now();
        while let Some(Reverse(first)) = q.heap.peek() {
            if first.due > now {
                break;
            }
            if let Some(Reverse(d)) = q.heap.pop() {
                due.push(d.datagram);
            }
        }
        if due.is_empty() {
            let wait = q
                .heap
                .peek()
                .map_or(TICK, |Reverse(first)| (first.due - now).min(TICK));
            // Spurious wake-ups only cost a loop: due times are rechecked.
            drop(
                line.earlier
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner),
            );
            continue;
        }
        drop(q);
        for datagram in due.drain(..) {
            if shared.cut.load(Ordering::Relaxed) {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.send(&datagram);
            }
        }
    }
}

/// The thread reading the listen socket, which owns the sessions.
struct Downstream {
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    to_upstream: Arc<DelayLine>,
    to_downstream: Arc<DelayLine>,
}

/// One downstream source's upstream socket and the thread reading it.
struct Session {
    socket: Arc<UdpSocket>,
    /// `Shared::now_ms` of the last datagram either way.
    last_active: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Downstream {
    fn run(self) {
        let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut reaped = Instant::now();
        while !self.shared.stopped() {
            if reaped.elapsed() >= TICK {
                reap(&mut sessions);
                reaped = Instant::now();
            }
            let (n, from) = match self.listen.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e) if is_timeout(&e) => continue,
                // Errors here are transient (an ICMP report, a signal);
                // pause briefly so a persistent one cannot spin.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            if sessions.get(&from).is_none_or(|s| s.thread.is_finished()) {
                match self.open_session(from) {
                    Ok(session) => {
                        if let Some(old) = sessions.insert(from, session) {
                            let _ = old.thread.join();
                        }
                    }
                    Err(_) => {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let Some(session) = sessions.get(&from) else {
                continue; // inserted just above
            };
            session
                .last_active
                .store(self.shared.now_ms(), Ordering::Relaxed);
            let datagram = Datagram {
                socket: session.socket.clone(),
                to: self.upstream,
                bytes: buf[..n].to_vec(),
            };
            self.shared.forward(&self.to_upstream, datagram);
        }
        for (_, session) in sessions {
            let _ = session.thread.join();
        }
    }

    /// Binds a new upstream socket for `client` and starts reading replies.
    fn open_session(&self, client: SocketAddr) -> std::io::Result<Session> {
        // The server's own loopback address when it is on loopback (as in
        // tests), else any local address of its family.
        let ip = match self.upstream.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = Arc::new(bind(SocketAddr::new(ip, 0))?);
        let last_active = Arc::new(AtomicU64::new(self.shared.now_ms()));
        let upstream = Upstream {
            shared: self.shared.clone(),
            socket: socket.clone(),
            upstream: self.upstream,
            client,
            listen: self.listen.clone(),
            to_downstream: self.to_downstream.clone(),
            last_active: last_active.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fault-proxy-up".into())
            .spawn(move || upstream.run())?;
        Ok(Session {
            socket,
            last_active,
            thread,
        })
    }
}

/// Joins the threads of sessions that closed for idleness.
fn reap(sessions: &mut HashMap<SocketAddr, Session>) {
    let closed: Vec<SocketAddr> = sessions
        .iter()
        .filter(|(_, s)| s.thread.is_finished())
        .map(|(addr, _)| *addr)
        .collect();
    for addr in closed {
        if let Some(session) = sessions.remove(&addr) {
            let _ = session.thread.join();
        }
    }
}

/// A session's thread: replies from upstream, back to its client.
struct Upstream {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    to_downstream: Arc<DelayLine>,
    last_active: Arc<AtomicU64>,
}

impl Upstream {
    fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let idle_ms = u64::try_from(SESSION_IDLE.as_millis()).unwrap_or(u64::MAX);
        while !self.shared.stopped() {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) if from == self.upstream => {
                    self.last_active
                        .store(self.shared.now_ms(), Ordering::Relaxed);
                    let datagram = Datagram {
                        socket: self.listen.clone(),
                        to: self.client,
                        bytes: buf[..n].to_vec(),
                    };
                    self.shared.forward(&self.to_downstream, datagram);
                }
                Ok(_) => {} // not from upstream: ignore
                Err(e) if is_timeout(&e) => {
                    let last = self.last_active.load(Ordering::Relaxed);
                    if self.shared.now_ms().saturating_sub(last) > idle_ms {
                        return;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// Binds a UDP socket with large buffers and a [`TICK`] read timeout.
fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A PRNG seed that differs between proxies but is the same on every run
/// with the same addresses.
fn seed_for(listen: SocketAddr, upstream: SocketAddr) -> u64 {
    (u64::from(listen.port()) << 16 | u64::from(upstream.port())) ^ 0x5EED_F00D_CAFE_D00D
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    /// A UDP echo server on loopback, stopped when dropped.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Self {
            let socket = UdpSocket::bind(LOOPBACK).unwrap();
            socket.set_read_timeout(Some(TICK)).unwrap();
            let addr = socket.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            });
            Self {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    fn client(wait: Duration) -> UdpSocket {
        let socket = UdpSocket::bind(LOOPBACK).unwrap();
        socket.set_read_timeout(Some(wait)).unwrap();
        socket
    }

    /// Sends `msg` through `proxy` and waits up to the client's read timeout
    /// for it to come back; the round-trip time, or None.
    fn round_trip(client: &UdpSocket, proxy: &FaultProxy, msg: &[u8]) -> Option<Duration> {
        let start = Instant::now();
        client.send_to(msg, proxy.addr()).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = client.recv_from(&mut buf).ok()?;
        assert_eq!(&buf[..n], msg, "the reply echoes the request");
        Some(start.elapsed())
    }

    fn proxy_to(echo: &Echo) -> FaultProxy {
        FaultProxy::start(LOOPBACK, echo.addr).unwrap()
    }

    #[test]
    fn datagrams_pass_both_ways() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let c = client(Duration::from_secs(2));
        for i in 0..10u8 {
            assert!(round_trip(&c, &proxy, &[i; 100]).is_some());
        }
        assert_eq!(proxy.forwarded(), 20);
        assert_eq!(proxy.dropped(), 0);
    }

    #[test]
    fn each_source_gets_its_own_replies() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let (a, b) = (
            client(Duration::from_secs(2)),
            client(Duration::from_secs(2)),
        );
        a.send_to(b"from a", proxy.addr()).unwrap();
        b.send_to(b"from b", proxy.addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"from a"[..], proxy.addr()));
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"from b"[..], proxy.addr()));
    }

    #[test]
    fn cut_drops_everything_and_heal_restores() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let c = client(Duration::from_millis(300));
        assert!(round_trip(&c, &proxy, b"before").is_some());
        proxy.cut(true);
        for _ in 0..3 {
            assert_eq!(round_trip(&c, &proxy, b"during"), None);
        }
        assert_eq!(proxy.dropped(), 3);
        proxy.heal();
        assert!(round_trip(&c, &proxy, b"after").is_some());
        assert_eq!(proxy.forwarded(), 4);
    }

    #[test]
    fn delay_holds_each_direction() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let c = client(Duration::from_secs(2));
        proxy.set_delay(Duration::from_millis(100));
        let rtt = round_trip(&c, &proxy, b"slow").unwrap();
        // 100 ms on the way up and 100 ms on the way back.
        assert!(rtt >= Duration::from_millis(180), "round trip took {rtt:?}");
        proxy.heal();
        let rtt = round_trip(&c, &proxy, b"fast").unwrap();
        assert!(rtt < Duration::from_millis(90), "round trip took {rtt:?}");
    }

    #[test]
    fn delayed_datagrams_do_not_wait_for_each_other() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let c = client(Duration::from_secs(2));
        proxy.set_delay(Duration::from_millis(100));
        let start = Instant::now();
        for i in 0..50u8 {
            c.send_to(&[i], proxy.addr()).unwrap();
        }
        let mut buf = [0u8; 16];
        for _ in 0..50 {
            c.recv_from(&mut buf).unwrap();
        }
        // Serially this would take 50 × 200 ms.
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "50 echoes took {took:?}");
        assert!(
            took >= Duration::from_millis(180),
            "50 echoes took {took:?}"
        );
    }

    #[test]
    fn drop_probability_one_drops_all_and_a_half_drops_some() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        // Sends `n` datagrams at once and counts the echoes that come back
        // before 200 ms of silence.
        let echoes = |n: u64| {
            let c = client(Duration::from_millis(200));
            for i in 0..n {
                c.send_to(&i.to_le_bytes(), proxy.addr()).unwrap();
            }
            let mut buf = [0u8; 16];
            std::iter::from_fn(|| c.recv_from(&mut buf).ok()).count()
        };
        proxy.set_drop(1.0);
        assert_eq!(echoes(50), 0);
        assert_eq!((proxy.forwarded(), proxy.dropped()), (0, 50));

        proxy.set_drop(0.5);
        let passed = echoes(400);
        // An echo survives two draws: about 100 of 400.
        assert!((40..=200).contains(&passed), "{passed} of 400 came back");
    }

    #[test]
    fn dropping_the_proxy_frees_its_port_promptly() {
        let echo = Echo::start();
        let proxy = proxy_to(&echo);
        let c = client(Duration::from_secs(2));
        assert!(round_trip(&c, &proxy, b"open a session").is_some());
        let addr = proxy.addr();
        let start = Instant::now();
        drop(proxy);
        assert!(start.elapsed() < Duration::from_millis(500));
        UdpSocket::bind(addr).expect("the listen port is free after drop");
    }
}
