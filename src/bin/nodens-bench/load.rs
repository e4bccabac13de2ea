//! The load engine: sends a workload's lookups to one server and measures
//! every query and every lookup.
//!
//! Each thread owns a few sockets (connected UDP, or TCP connections with
//! pipelined, length-framed queries, RFC 7766) and runs one loop: start the
//! lookups that are due, send their queries in `sendmmsg` batches, drain
//! answers with `recvmmsg`, expire queries past their timeout, and sleep in
//! `ppoll` only when there is nothing to do.
//!
//! - **Open loop** (`--rate`): lookup `n` is scheduled at `n / rate`; its
//!   first queries' latency and the lookup's latency count from that
//!   scheduled time, not from when the loop got round to sending, so a
//!   stalled server cannot hide its stalls (no coordinated omission). A
//!   walk's later pairs count from when they were sent, which is when the
//!   client would send them.
//! - **Closed loop** (`--concurrency`): N lookups in flight; a new one starts
//!   when one ends.
//! - Query IDs index a fixed table per socket (65,536 slots) holding the
//!   lookup, the send time and a checksum of the question, so an answer is
//!   matched without a search and a late answer to a recycled ID is caught.
//!   Timeouts come off a FIFO in send order.
//! - After the duration no lookup starts and no walk goes on (those are
//!   counted as abandoned); queries in flight get their timeout to answer.
//!   qps counts answers that arrived within the duration.
//!
//! Must not: allocate, log or lock per query (histograms are fixed-size;
//! the queues are allocated up front), or send anywhere but `server`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::glibc::{Candidate, Outcome, PairResult, Reply, Step, Walk};
use crate::sys::{self, Datagrams, Interest};
use crate::workload::{Source, Target, Workload};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
/// Lookups in flight per thread at most: each has at most two queries on
/// one socket, so even if every one landed on the same socket its 65,536
/// IDs would not run out.
const MAX_FLIGHTS: usize = 30_000;
/// The last stretch before a due send or timeout is spun, not slept.
const SPIN_NS: u64 = 30_000;
/// Latency histograms span 1 ns to 100 s at 3 significant digits.
const HIST_MAX_NS: u64 = 100_000_000_000;

/// How lookups are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Lookups per second, spread evenly, whatever the server does.
    Open { rate: f64 },
    /// Lookups in flight.
    Closed { concurrency: usize },
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub server: SocketAddr,
    pub tcp: bool,
    pub pace: Pace,
    /// Stop starting lookups after this long (`None`: only `max_lookups`).
    pub duration: Option<Duration>,
    pub max_lookups: Option<u64>,
    pub timeout: Duration,
    pub threads: usize,
    /// Sockets (or TCP connections) per thread.
    pub sockets: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("opening a socket to {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("waiting on sockets: {0}")]
    Poll(io::Error),
    #[error("a load thread panicked")]
    Panicked,
}

/// What one class of lookups (the workload, or the mixed-in one) did.
#[derive(Clone, Debug)]
pub struct ClassStats {
    pub sent: u64,
    pub answered: u64,
    /// Answers that arrived before the duration ended: the qps numerator.
    pub answered_in_window: u64,
    pub timed_out: u64,
    pub truncated: u64,
    pub rcodes: [u64; 16],
    /// Per query, ns.
    pub query_ns: Histogram<u64>,
    /// Per finished lookup, ns.
    pub lookup_ns: Histogram<u64>,
    pub lookups_started: u64,
    pub lookups_done: u64,
    pub found: u64,
    pub nodata: u64,
    pub nxdomain: u64,
    pub failed: u64,
    pub abandoned: u64,
    /// Queries and A+AAAA round trips of finished lookups.
    pub lookup_queries: u64,
    pub lookup_round_trips: u64,
    /// Open loop: how late lookups started against their schedule, ns. The
    /// bench's own error; it is inside the measured latencies.
    pub lag_ns: Histogram<u64>,
}

impl ClassStats {
    fn new() -> ClassStats {
        let hist = || Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant histogram bounds are valid");
        ClassStats {
            sent: 0,
            answered: 0,
            answered_in_window: 0,
            timed_out: 0,
            truncated: 0,
            rcodes: [0; 16],
            query_ns: hist(),
            lookup_ns: hist(),
            lookups_started: 0,
            lookups_done: 0,
            found: 0,
            nodata: 0,
            nxdomain: 0,
            failed: 0,
            abandoned: 0,
            lookup_queries: 0,
            lookup_round_trips: 0,
            lag_ns: hist(),
        }
    }

    fn merge(&mut self, o: &ClassStats) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.answered_in_window += o.answered_in_window;
        self.timed_out += o.timed_out;
        self.truncated += o.truncated;
        for (a, b) in self.rcodes.iter_mut().zip(o.rcodes) {
            *a += b;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.query_ns.add(&o.query_ns);
        let _ = self.lookup_ns.add(&o.lookup_ns);
        self.lookups_started += o.lookups_started;
        self.lookups_done += o.lookups_done;
        self.found += o.found;
        self.nodata += o.nodata;
        self.nxdomain += o.nxdomain;
        self.failed += o.failed;
        self.abandoned += o.abandoned;
        self.lookup_queries += o.lookup_queries;
        self.lookup_round_trips += o.lookup_round_trips;
        let _ = self.lag_ns.add(&o.lag_ns);
    }
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Stats {
    pub classes: Vec<ClassStats>,
    /// Answers matching no query in flight (late after a timeout, duplicated,
    /// or not an answer to us).
    pub unexpected: u64,
    /// Datagrams the kernel refused to send (they count as sent and time out).
    pub send_refused: u64,
    /// The measured window: the duration, or until the last lookup ended.
    pub window: Duration,
}

/// Runs the load: `threads` threads, each taking lookups from its own
/// `source(thread)`. Every socket is opened before any thread starts.
pub fn run(spec: &LoadSpec, wl: &Workload, mut source: impl FnMut(usize) -> Source) -> Result<Stats, LoadError> {
    let threads = spec.threads.max(1);
    let sockets = spec.sockets.clamp(1, 32);
    let nclasses = wl.classes().len();
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns = (0..sockets)
            .map(|_| Conn::open(spec.server, spec.tcp))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LoadError::Socket {
                addr: spec.server,
                source,
            })?;
        let pace = match spec.pace {
            Pace::Open { rate } => Pace::Open {
                rate: rate / threads as f64,
            },
            Pace::Closed { concurrency } => Pace::Closed {
                concurrency: (concurrency / threads + usize::from(t < concurrency % threads)).max(1),
            },
        };
        let max_lookups = spec
            .max_lookups
            .map(|n| n / threads as u64 + u64::from((t as u64) < n % threads as u64));
        workers.push(Worker::new(
            spec,
            wl,
            conns,
            pace,
            max_lookups,
            nclasses,
            source(t),
            t,
            threads,
        ));
    }
    let barrier = Barrier::new(threads);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| {
                let barrier = &barrier;
                s.spawn(move || {
                    sys::tight_timer_slack();
                    barrier.wait();
                    w.run()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut total: Option<Stats> = None;
    for r in results {
        let st = r.map_err(|_| LoadError::Panicked)??;
        match &mut total {
            None => total = Some(st),
            Some(acc) => {
                for (a, b) in acc.classes.iter_mut().zip(&st.classes) {
                    a.merge(b);
                }
                acc.unexpected += st.unexpected;
                acc.send_refused += st.send_refused;
                acc.window = acc.window.max(st.window);
            }
        }
    }
    Ok(total.expect("at least one thread"))
}

/// One query in flight, indexed by its ID.
#[derive(Clone, Copy, Default)]
struct Slot {
    busy: bool,
    /// Bumped when the slot is freed, so stale FIFO entries are recognised.
    gen: u32,
    flight: u32,
    /// 0: A (or the single query), 1: AAAA.
    part: u8,
    /// Latency counts from here (ns since start).
    base: u64,
    check: u32,
}

/// A timeout to check, in send order.
#[derive(Clone, Copy)]
struct Due {
    id: u16,
    gen: u32,
    deadline: u64,
}

struct TcpConn {
    stream: TcpStream,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    broken: bool,
}

enum Io {
    /// Boxed: the batch buffers' headers are large and the enum is moved.
    Udp {
        sock: UdpSocket,
        out: Box<Datagrams>,
    },
    Tcp(TcpConn),
}

struct Conn {
    io: Io,
    server: SocketAddr,
    slots: Box<[Slot]>,
    next_id: u16,
    fifo: VecDeque<Due>,
}

impl Conn {
    fn open(server: SocketAddr, tcp: bool) -> io::Result<Conn> {
        let io = if tcp {
            Io::Tcp(TcpConn::connect(server)?)
        } else {
            let local: SocketAddr = if server.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(server),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            // Room for a burst of answers while the loop is busy sending.
            let _ = sock.set_recv_buffer_size(4 << 20);
            let _ = sock.set_send_buffer_size(4 << 20);
            sock.bind(&local.into())?;
            sock.connect(&server.into())?;
            Io::Udp {
                sock: sock.into(),
                out: Box::new(Datagrams::new()),
            }
        };
        Ok(Conn {
            io,
            server,
            slots: vec![Slot::default(); 1 << 16].into_boxed_slice(),
            next_id: rand::random(),
            fifo: VecDeque::with_capacity(1 << 16),
        })
    }

    fn alloc_id(&mut self) -> Option<u16> {
        for _ in 0..(1 << 16) {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.slots[id as usize].busy {
                return Some(id);
            }
        }
        None
    }

    fn interest(&self) -> Interest {
        match &self.io {
            Io::Udp { sock, .. } => Interest {
                fd: sock.as_raw_fd(),
                write: false,
            },
            Io::Tcp(t) => Interest {
                fd: t.stream.as_raw_fd(),
                write: t.wpos < t.wbuf.len(),
            },
        }
    }

    /// Sends what is queued; returns datagrams the kernel refused.
    fn flush(&mut self) -> usize {
        match &mut self.io {
            Io::Udp { sock, out } => {
                if out.len() == 0 {
                    0
                } else {
                    out.send(sock.as_raw_fd())
                }
            }
            Io::Tcp(t) => {
                t.flush();
                0
            }
        }
    }
}

impl TcpConn {
    fn connect(server: SocketAddr) -> io::Result<TcpConn> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(TcpConn {
            stream,
            rbuf: vec![0u8; 2 + 65535 + 4096].into_boxed_slice(),
            rlen: 0,
            wbuf: Vec::with_capacity(1 << 16),
            wpos: 0,
            broken: false,
        })
    }

    fn flush(&mut self) {
        while self.wpos < self.wbuf.len() && !self.broken {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => self.broken = true,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
        if self.wpos == self.wbuf.len() || self.broken {
            self.wbuf.clear();
            self.wpos = 0;
        }
    }
}

/// A lookup in flight.
#[derive(Clone, Copy)]
struct Flight {
    class: u8,
    target: Target,
    walk: Option<Walk>,
    cand: Candidate,
    /// Scheduled start, ns since the run started.
    sched: u64,
    queries: u16,
    round_trips: u16,
    pending: u8,
    replies: [Reply; 2],
    conn: u16,
}

struct Worker<'a> {
    wl: &'a Workload,
    conns: Vec<Conn>,
    flights: Vec<Flight>,
    free: Vec<u32>,
    pace: Pace,
    timeout: u64,
    end: u64,
    max_lookups: u64,
    source: Source,
    source_done: bool,
    /// Thread index and count: open-loop schedules interleave between threads.
    thread: usize,
    threads: usize,
    stats: Vec<ClassStats>,
    unexpected: u64,
    send_refused: u64,
    next_conn: usize,
    started: u64,
    stopped: bool,
    last_event: u64,
    start: Instant,
}

impl<'a> Worker<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: &LoadSpec,
        wl: &'a Workload,
        conns: Vec<Conn>,
        pace: Pace,
        max_lookups: Option<u64>,
        nclasses: usize,
        source: Source,
        thread: usize,
        threads: usize,
    ) -> Worker<'a> {
        let cap = match pace {
            Pace::Closed { concurrency } => concurrency.min(MAX_FLIGHTS),
            Pace::Open { .. } => MAX_FLIGHTS,
        };
        let placeholder = Flight {
            class: 0,
            target: Target::Hit(0),
            walk: None,
            cand: Candidate::AsIs,
            sched: 0,
            queries: 0,
            round_trips: 0,
            pending: 0,
            replies: [Reply::Timeout; 2],
            conn: 0,
        };
        Worker {
            wl,
            conns,
            flights: vec![placeholder; cap],
            free: (0..cap as u32).rev().collect(),
            pace,
            timeout: spec.timeout.as_nanos() as u64,
            end: spec.duration.map_or(u64::MAX, |d| d.as_nanos() as u64),
            max_lookups: max_lookups.unwrap_or(u64::MAX),
            source,
            source_done: false,
            thread,
            threads,
            stats: (0..nclasses).map(|_| ClassStats::new()).collect(),
            unexpected: 0,
            send_refused: 0,
            next_conn: thread,
            started: 0,
            stopped: false,
            last_event: 0,
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn in_flight(&self) -> usize {
        self.flights.len() - self.free.len()
    }

    fn run(mut self) -> Result<Stats, LoadError> {
        self.start = Instant::now();
        let mut rx = Datagrams::new();
        let mut interests = Vec::with_capacity(self.conns.len());
        // Open loop: lookup n of this thread is due at (n + offset) * interval.
        let interval = match self.pace {
            Pace::Open { rate } if rate > 0.0 => 1e9 / rate,
            _ => 0.0,
        };
        let mut next_due = interval * self.thread as f64 / self.threads as f64;
        let mut hard_stop = u64::MAX;
        let mut stopped_at = 0;
        loop {
            let now = self.now();
            let mut progressed = false;
            if !self.stopped && (now >= self.end || self.started >= self.max_lookups || self.source_done) {
                self.stopped = true;
                stopped_at = now;
                hard_stop = now + 2 * self.timeout + 1_000_000_000;
            }
            if !self.stopped {
                match self.pace {
                    Pace::Open { .. } => {
                        // Catch up on everything due, but yield to receiving
                        // after a batch so answers are not left queued.
                        let mut n = 0;
                        while (next_due as u64) <= now && n < 256 && !self.free.is_empty() {
                            if !self.start_lookup(next_due as u64, now) {
                                break;
                            }
                            next_due += interval;
                            n += 1;
                        }
                        progressed |= n > 0;
                    }
                    Pace::Closed { .. } => {
                        let mut n = 0;
                        while !self.free.is_empty() && n < 256 && self.start_lookup(now, now) {
                            n += 1;
                        }
                        progressed |= n > 0;
                    }
                }
            }
            self.flush_all();
            progressed |= self.receive_all(&mut rx)?;
            self.flush_all();
            let now = self.now();
            self.expire(now);
            self.flush_all();
            if self.stopped && self.in_flight() == 0 {
                break;
            }
            if now >= hard_stop {
                self.give_up();
                break;
            }
            if !progressed {
                // Sleep until the next lookup is due, the oldest query
                // times out, or 10 ms (to notice the end of the run).
                let mut wake = now + 10_000_000;
                if !self.stopped && interval > 0.0 && !self.free.is_empty() {
                    wake = wake.min(next_due as u64);
                }
                for c in &self.conns {
                    if let Some(d) = c.fifo.front() {
                        wake = wake.min(d.deadline);
                    }
                }
                if !self.stopped && self.end != u64::MAX {
                    wake = wake.min(self.end);
                }
                // Sleep only until SPIN_NS before the wake-up, then spin:
                // a thread woken from ppoll runs tens of µs late, and an
                // open-loop send that late counts in the latencies.
                if wake > now + SPIN_NS {
                    interests.clear();
                    interests.extend(self.conns.iter().map(Conn::interest));
                    let nap = Duration::from_nanos(wake - now - SPIN_NS);
                    sys::wait(&interests, nap).map_err(LoadError::Poll)?;
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        // A run cut short by --queries (or a warm-up list) is measured to its
        // last answer; a timed run over its whole duration.
        let window = if self.end != u64::MAX && stopped_at >= self.end {
            Duration::from_nanos(self.end)
        } else {
            Duration::from_nanos(self.last_event.max(1))
        };
        Ok(Stats {
            classes: self.stats,
            unexpected: self.unexpected,
            send_refused: self.send_refused,
            window,
        })
    }

    fn flush_all(&mut self) {
        for c in &mut self.conns {
            self.send_refused += c.flush() as u64;
        }
    }

    /// Takes the next lookup from the source and sends its first queries.
    /// False when the source is exhausted.
    fn start_lookup(&mut self, sched: u64, now: u64) -> bool {
        let Some((class, target)) = self.source.next() else {
            self.source_done = true;
            return false;
        };
        let Some(f) = self.free.pop() else {
            return false;
        };
        self.started += 1;
        let st = &mut self.stats[class as usize];
        st.lookups_started += 1;
        if matches!(self.pace, Pace::Open { .. }) {
            st.lag_ns.saturating_record(now.saturating_sub(sched).max(1));
        }
        let conn = (self.next_conn % self.conns.len()) as u16;
        self.next_conn = self.next_conn.wrapping_add(1);
        let mut flight = Flight {
            class,
            target,
            walk: None,
            cand: Candidate::AsIs,
            sched,
            queries: 0,
            round_trips: 0,
            pending: 0,
            replies: [Reply::Timeout; 2],
            conn,
        };
        if let Target::Pod { name, .. } = target {
            let (walk, step) = Walk::start(self.wl.dots(name), false, self.wl.ndots(), self.wl.search_len());
            flight.walk = Some(walk);
            if let Step::Ask(c) = step {
                flight.cand = c;
            }
        }
        self.flights[f as usize] = flight;
        self.send_round(f, sched, now);
        true
    }

    /// Sends the queries of the flight's current candidate: an A+AAAA pair
    /// for a walk, one A query otherwise.
    fn send_round(&mut self, f: u32, base: u64, now: u64) {
        let fl = &mut self.flights[f as usize];
        let pair = fl.walk.is_some();
        fl.round_trips += 1;
        fl.pending = if pair { 2 } else { 1 };
        fl.queries += fl.pending as u16;
        fl.replies = [Reply::Timeout; 2];
        self.send_query(f, 0, TYPE_A, base, now);
        if pair {
            self.send_query(f, 1, TYPE_AAAA, base, now);
        }
    }

    fn send_query(&mut self, f: u32, part: u8, qtype: u16, base: u64, now: u64) {
        let fl = self.flights[f as usize];
        let deadline = now + self.timeout;
        self.stats[fl.class as usize].sent += 1;
        let conn = &mut self.conns[fl.conn as usize];
        let Some(id) = conn.alloc_id() else {
            // Cannot happen with MAX_FLIGHTS below the ID space; if it did,
            // the query is lost like one the network dropped.
            self.stats[fl.class as usize].timed_out += 1;
            self.reply(f, part, Reply::Timeout, now);
            return;
        };
        let mut scratch = [0u8; 12 + 256 + 4];
        let len = self.wl.write_query(&fl.target, fl.cand, qtype, id, &mut scratch);
        let check = question_check(&scratch[12..len]);
        match &mut conn.io {
            Io::Udp { sock, out } => {
                if out.is_full() {
                    self.send_refused += out.send(sock.as_raw_fd()) as u64;
                }
                if let Some(buf) = out.next_buf() {
                    buf[..len].copy_from_slice(&scratch[..len]);
                    out.commit(len, None);
                }
            }
            Io::Tcp(t) => {
                if !t.broken {
                    t.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
                    t.wbuf.extend_from_slice(&scratch[..len]);
                    if t.wbuf.len() - t.wpos > 32 * 1024 {
                        t.flush();
                    }
                }
            }
        }
        let slot = &mut conn.slots[id as usize];
        slot.busy = true;
        slot.flight = f;
        slot.part = part;
        slot.base = base;
        slot.check = check;
        conn.fifo.push_back(Due {
            id,
            gen: slot.gen,
            deadline,
        });
    }

    /// Reads every answer queued on every socket. True if any came.
    fn receive_all(&mut self, rx: &mut Datagrams) -> Result<bool, LoadError> {
        let mut any = false;
        for c in 0..self.conns.len() {
            match &mut self.conns[c].io {
                Io::Udp { sock, .. } => {
                    let fd = sock.as_raw_fd();
                    // Bounded so one busy socket cannot starve the sender.
                    for _ in 0..8 {
                        let n = match rx.recv(fd, false) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // ECONNREFUSED and the like: the query is lost,
                            // the socket still works.
                            Err(_) => continue,
                        };
                        let now = self.now();
                        for i in 0..n {
                            self.answer(c, rx.get(i), now);
                        }
                        any |= n > 0;
                        if n < sys::BATCH {
                            break;
                        }
                    }
                }
                Io::Tcp(_) => any |= self.receive_tcp(c),
            }
        }
        Ok(any)
    }

    fn receive_tcp(&mut self, c: usize) -> bool {
        let Io::Tcp(t) = &mut self.conns[c].io else {
            return false;
        };
        if t.broken {
            return false;
        }
        let mut any = false;
        loop {
            let Io::Tcp(t) = &mut self.conns[c].io else {
                return any;
            };
            match t.stream.read(&mut t.rbuf[t.rlen..]) {
                Ok(0) => {
                    t.broken = true;
                    return any;
                }
                Ok(n) => t.rlen += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    t.broken = true;
                    return any;
                }
            }
            // Take the buffer out so answers can be handled with `self`.
            let buf = std::mem::take(&mut t.rbuf);
            let mut at = 0;
            let mut rlen = t.rlen;
            let now = self.now();
            while rlen - at >= 2 {
                let len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
                if rlen - at < 2 + len {
                    break;
                }
                self.answer(c, &buf[at + 2..at + 2 + len], now);
                any = true;
                at += 2 + len;
            }
            let Io::Tcp(t) = &mut self.conns[c].io else {
                return any;
            };
            t.rbuf = buf;
            t.rbuf.copy_within(at..rlen, 0);
            rlen -= at;
            t.rlen = rlen;
        }
    }

    /// Matches one answer to its query and moves its lookup on.
    fn answer(&mut self, c: usize, msg: &[u8], now: u64) {
        if msg.len() < 12 || msg[2] & 0x80 == 0 {
            self.unexpected += 1;
            return;
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let conn = &mut self.conns[c];
        let slot = conn.slots[id as usize];
        let qend = nodens::wire::parse_question_end(msg);
        let matches = slot.busy && qend.is_some_and(|e| question_check(&msg[12..e]) == slot.check);
        if !matches {
            self.unexpected += 1;
            return;
        }
        let s = &mut conn.slots[id as usize];
        s.busy = false;
        s.gen = s.gen.wrapping_add(1);
        let rcode = msg[3] & 0x0f;
        let ancount = u16::from_be_bytes([msg[6], msg[7]]);
        let class = self.flights[slot.flight as usize].class as usize;
        let st = &mut self.stats[class];
        st.answered += 1;
        if now < self.end {
            st.answered_in_window += 1;
        }
        st.rcodes[rcode as usize] += 1;
        if msg[2] & 0x02 != 0 {
            st.truncated += 1;
        }
        st.query_ns.saturating_record(now.saturating_sub(slot.base).max(1));
        self.last_event = now;
        self.reply(slot.flight, slot.part, Reply::Answer { rcode, ancount }, now);
    }

    /// Records one reply of a flight; when the round is complete, ends the
    /// lookup or sends the next candidate.
    fn reply(&mut self, f: u32, part: u8, r: Reply, now: u64) {
        let mut fl = self.flights[f as usize];
        fl.replies[part as usize] = r;
        fl.pending = fl.pending.saturating_sub(1);
        if fl.pending > 0 {
            self.flights[f as usize] = fl;
            return;
        }
        let verdict = match fl.walk {
            Some(_) => PairResult::of(fl.replies[0], fl.replies[1]),
            None => PairResult::of(fl.replies[0], fl.replies[0]),
        };
        let step = match &mut fl.walk {
            Some(w) => w.next(verdict),
            None => Step::Done(verdict.into()),
        };
        let st = &mut self.stats[fl.class as usize];
        match step {
            Step::Ask(_) if self.stopped => {
                st.abandoned += 1;
                self.free.push(f);
            }
            Step::Ask(c) => {
                fl.cand = c;
                self.flights[f as usize] = fl;
                self.send_round(f, now, now);
            }
            Step::Done(o) => {
                st.lookups_done += 1;
                st.lookup_queries += fl.queries as u64;
                st.lookup_round_trips += fl.round_trips as u64;
                st.lookup_ns.saturating_record(now.saturating_sub(fl.sched).max(1));
                match o {
                    Outcome::Found => st.found += 1,
                    Outcome::NoData => st.nodata += 1,
                    Outcome::NotFound => st.nxdomain += 1,
                    Outcome::TryAgain | Outcome::NoRecovery => st.failed += 1,
                }
                self.last_event = now;
                self.free.push(f);
            }
        }
    }

    /// Times out every query past its deadline.
    fn expire(&mut self, now: u64) {
        for c in 0..self.conns.len() {
            while let Some(&d) = self.conns[c].fifo.front() {
                let slot = self.conns[c].slots[d.id as usize];
                if !slot.busy || slot.gen != d.gen {
                    self.conns[c].fifo.pop_front();
                    continue;
                }
                if d.deadline > now {
                    break;
                }
                self.conns[c].fifo.pop_front();
                let s = &mut self.conns[c].slots[d.id as usize];
                s.busy = false;
                s.gen = s.gen.wrapping_add(1);
                let class = self.flights[slot.flight as usize].class as usize;
                self.stats[class].timed_out += 1;
                self.last_event = now;
                self.reply(slot.flight, slot.part, Reply::Timeout, now);
            }
            let conn = &mut self.conns[c];
            if let Io::Tcp(t) = &mut conn.io {
                // A connection the server closed: reconnect once its queries
                // have timed out, so the run goes on.
                if t.broken && conn.fifo.is_empty() && !self.stopped {
                    if let Ok(fresh) = TcpConn::connect(conn.server) {
                        *t = fresh;
                    }
                }
            }
        }
    }

    /// The safety net after the drain: whatever is still in flight is lost.
    fn give_up(&mut self) {
        for conn in &mut self.conns {
            for s in conn.slots.iter_mut().filter(|s| s.busy) {
                s.busy = false;
                let class = self.flights[s.flight as usize].class as usize;
                self.stats[class].timed_out += 1;
            }
        }
        let mut busy = vec![true; self.flights.len()];
        for &f in &self.free {
            busy[f as usize] = false;
        }
        for (f, b) in busy.into_iter().enumerate() {
            if b {
                let class = self.flights[f].class as usize;
                self.stats[class].abandoned += 1;
            }
        }
        self.free = (0..self.flights.len() as u32).collect();
    }
}

/// FNV-1a over the question, case-folded: answers may echo the name in
/// another case (0x20 randomisation in some resolvers).
fn question_check(question: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in question {
        h ^= b.to_ascii_lowercase() as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_check_ignores_case_only() {
        assert_eq!(
            question_check(b"\x03ApI\x00\x00\x01"),
            question_check(b"\x03api\x00\x00\x01")
        );
        assert_ne!(
            question_check(b"\x03api\x00\x00\x01"),
            question_check(b"\x03api\x00\x00\x1c")
        );
    }
}
