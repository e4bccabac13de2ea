//! The bench upstream: the server every resolver under test forwards to.
//! It answers the generated zone (see `zone`) the way a cloud resolver
//! would (RA=1, AA=0, NXDOMAIN and NODATA with an SOA for negative caching,
//! RFC 2308), counts what it is asked, and can drop queries above a rate the
//! way cloud resolvers do (AWS: 1024 packets/s per interface).
//!
//! - UDP: `threads` SO_REUSEPORT sockets, each with a thread in a
//!   `recvmmsg`/`sendmmsg` loop; answers are written straight from the
//!   zone's data, no message decode (`nodens::wire::parse_query` reads the
//!   query without allocating).
//! - TCP on the same port (NodeLocal DNSCache forwards the cluster zone with
//!   `force_tcp`): a thread per connection, at most 256 connections.
//! - Counters: total, per type (A, AAAA, other), NXDOMAIN answers, dropped by
//!   the cap, over TCP. Readable in-process ([`Upstream::counts`]) and by any
//!   process over DNS: `stats.nodens-bench. CH TXT` answers
//!   `queries=… a=… aaaa=… other=… nxdomain=… dropped=… tcp=…` (not counted,
//!   never dropped); [`fetch_counts`] asks it.
//! - The rate cap counts queries in fixed one-second windows over all
//!   sockets and drops (no answer) past `cap` in a window.
//!
//! Must not: listen anywhere it was not told, log per query, or allocate per
//! UDP query.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nodens::wire::{self, Head, Malformed};
use serde::{Deserialize, Serialize};

use crate::sys::{self, Datagrams, Interest};
use crate::zone::{self, Found, NameError, Node, Zone, ZoneSpec, CLUSTER_TTL};

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const CLASS_CH: u16 = 3;
/// Our EDNS payload size when the query has EDNS (the DNS flag day value).
const EDNS_SIZE: u16 = 1232;
const MAX_TCP_CONNS: usize = 256;
/// How often blocked threads look at the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// The stats question: `stats.nodens-bench.` in wire form.
const STATS_NAME: &[u8] = b"\x05stats\x0cnodens-bench\x00";

#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub listen: SocketAddr,
    pub threads: usize,
    /// Queries per second answered at most; the rest are dropped.
    pub rate_cap: Option<u64>,
    pub zone: ZoneSpec,
    /// TTL and MINIMUM of the root SOA: how long resolvers cache NXDOMAIN
    /// for names outside the cluster domain.
    pub neg_ttl: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Zone(#[from] NameError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("starting a thread: {0}")]
    Thread(io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("asking {addr} for its counters: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr} did not answer the stats query like a bench upstream")]
    NotUpstream { addr: SocketAddr },
}

/// What the upstream was asked. Differences of two snapshots give a run's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub queries: u64,
    pub a: u64,
    pub aaaa: u64,
    pub other: u64,
    pub nxdomain: u64,
    pub dropped: u64,
    pub tcp: u64,
}

impl Counts {
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            queries: self.queries.saturating_sub(before.queries),
            a: self.a.saturating_sub(before.a),
            aaaa: self.aaaa.saturating_sub(before.aaaa),
            other: self.other.saturating_sub(before.other),
            nxdomain: self.nxdomain.saturating_sub(before.nxdomain),
            dropped: self.dropped.saturating_sub(before.dropped),
            tcp: self.tcp.saturating_sub(before.tcp),
        }
    }

    fn to_txt(self) -> String {
        format!(
            "queries={} a={} aaaa={} other={} nxdomain={} dropped={} tcp={}",
            self.queries, self.a, self.aaaa, self.other, self.nxdomain, self.dropped, self.tcp
        )
    }

    fn from_txt(s: &str) -> Option<Counts> {
        let mut c = Counts::default();
        let mut seen = 0;
        for kv in s.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            let field = match k {
                "queries" => &mut c.queries,
                "a" => &mut c.a,
                "aaaa" => &mut c.aaaa,
                "other" => &mut c.other,
                "nxdomain" => &mut c.nxdomain,
                "dropped" => &mut c.dropped,
                "tcp" => &mut c.tcp,
                _ => continue,
            };
            *field = v;
            seen += 1;
        }
        (seen > 0).then_some(c)
    }
}

/// One writer's counters, on their own cache line. UDP threads each own one
/// and update it with plain load+store (no locked instruction); the TCP
/// threads share one with `fetch_add`.
#[repr(align(64))]
#[derive(Default)]
struct Local {
    queries: AtomicU64,
    a: AtomicU64,
    aaaa: AtomicU64,
    other: AtomicU64,
    nxdomain: AtomicU64,
    dropped: AtomicU64,
    tcp: AtomicU64,
}

impl Local {
    fn bump(&self, c: &AtomicU64, shared: bool) {
        if shared {
            c.fetch_add(1, Relaxed);
        } else {
            c.store(c.load(Relaxed) + 1, Relaxed);
        }
    }

    fn read(&self) -> Counts {
        Counts {
            queries: self.queries.load(Relaxed),
            a: self.a.load(Relaxed),
            aaaa: self.aaaa.load(Relaxed),
            other: self.other.load(Relaxed),
            nxdomain: self.nxdomain.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            tcp: self.tcp.load(Relaxed),
        }
    }
}

/// Every writer's counters; the last one is shared by the TCP threads.
struct Counters(Vec<Local>);

impl Counters {
    fn sum(&self) -> Counts {
        self.0.iter().map(Local::read).fold(Counts::default(), |a, b| Counts {
            queries: a.queries + b.queries,
            a: a.a + b.a,
            aaaa: a.aaaa + b.aaaa,
            other: a.other + b.other,
            nxdomain: a.nxdomain + b.nxdomain,
            dropped: a.dropped + b.dropped,
            tcp: a.tcp + b.tcp,
        })
    }
}

/// Fixed one-second windows over all sockets.
struct Limiter {
    cap: u64,
    start: Instant,
    window: AtomicU64,
    used: AtomicU64,
}

impl Limiter {
    fn allow(&self) -> bool {
        let now = self.start.elapsed().as_secs();
        let w = self.window.load(Relaxed);
        if now != w && self.window.compare_exchange(w, now, Relaxed, Relaxed).is_ok() {
            self.used.store(0, Relaxed);
        }
        self.used.fetch_add(1, Relaxed) < self.cap
    }
}

/// The answers: the zone plus the two SOA records, encoded once.
struct Responder {
    zone: Zone,
    soa_root: Vec<u8>,
    soa_cluster: Vec<u8>,
    limiter: Option<Limiter>,
    counters: Counters,
}

/// An SOA record (owner, type, class, TTL, RDATA) in wire form, RFC 1035 §3.3.13.
fn soa_record(owner: &[u8], mname: &[u8], rname: &[u8], ttl: u32, minimum: u32) -> Vec<u8> {
    let mut rdata = Vec::new();
    rdata.extend_from_slice(mname);
    rdata.extend_from_slice(rname);
    for v in [1u32, 7200, 1800, 86400, minimum] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let mut r = owner.to_vec();
    r.extend_from_slice(&TYPE_SOA.to_be_bytes());
    r.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&rdata);
    r
}

fn with_root(dotted: &str) -> Result<Vec<u8>, NameError> {
    let mut w = zone::labels(dotted)?;
    w.push(0);
    Ok(w)
}

impl Responder {
    fn new(spec: &UpstreamSpec) -> Result<Responder, NameError> {
        let cluster = with_root(&spec.zone.cluster_domain)?;
        Ok(Responder {
            zone: Zone::build(&spec.zone)?,
            soa_root: soa_record(
                &[0],
                &with_root("ns.bench-upstream.example")?,
                &with_root("hostmaster.bench-upstream.example")?,
                spec.neg_ttl,
                spec.neg_ttl,
            ),
            // CoreDNS' kubernetes plugin answers with this shape of SOA.
            soa_cluster: soa_record(
                &cluster,
                &with_root(&format!("ns.dns.{}", spec.zone.cluster_domain))?,
                &with_root(&format!("hostmaster.{}", spec.zone.cluster_domain))?,
                CLUSTER_TTL,
                CLUSTER_TTL,
            ),
            limiter: spec.rate_cap.map(|cap| Limiter {
                cap,
                start: Instant::now(),
                window: AtomicU64::new(0),
                used: AtomicU64::new(0),
            }),
            counters: Counters((0..spec.threads.max(1) + 1).map(|_| Local::default()).collect()),
        })
    }

    /// Writes the answer to `msg` into `out` (at least 512 bytes); `None`
    /// means no answer (not a query, or dropped by the cap). `writer` is the
    /// counters' index; the last one is the shared TCP one.
    fn answer(&self, msg: &[u8], out: &mut [u8], writer: usize) -> Option<usize> {
        let shared = writer + 1 == self.counters.0.len();
        let q = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(Malformed::Drop) => return None,
            Err(Malformed::FormErr { id, flags }) => {
                return Some(self.empty(msg, None, id, flags, wire::RCODE_FORMERR, out))
            }
            Err(Malformed::NotImp { id, flags }) => {
                return Some(self.empty(msg, None, id, flags, wire::RCODE_NOTIMP, out))
            }
            Err(Malformed::BadVers(q)) => {
                return Some(self.empty(msg, Some(&q), q.id, q.flags, wire::RCODE_BADVERS, out))
            }
        };
        let mut lower = [0u8; wire::MAX_NAME_LEN];
        let qname = q.qname(msg);
        let name = &mut lower[..qname.len()];
        wire::lower_name_into(qname, name);
        if q.qclass == CLASS_CH && q.qtype == TYPE_TXT && name == STATS_NAME {
            return Some(self.stats_answer(msg, &q, out));
        }
        let c = &self.counters.0[writer];
        if let Some(l) = &self.limiter {
            if !l.allow() {
                c.bump(&c.dropped, shared);
                return None;
            }
        }
        c.bump(&c.queries, shared);
        if shared {
            c.bump(&c.tcp, true);
        }
        c.bump(
            match q.qtype {
                TYPE_A => &c.a,
                TYPE_AAAA => &c.aaaa,
                _ => &c.other,
            },
            shared,
        );
        if q.qclass != wire::CLASS_IN {
            return Some(self.empty(msg, Some(&q), q.id, q.flags, wire::RCODE_REFUSED, out));
        }
        let qlen = q.question_end;
        out[..qlen].copy_from_slice(&msg[..qlen]);
        let mut at = qlen;
        let (rcode, an, soa): (u8, u16, Option<&[u8]>) = match self.zone.find(name) {
            Found::Node(Node::Addrs(a)) => {
                let rdata: Option<&[u8]> = match q.qtype {
                    TYPE_A => Some(&a.v4),
                    TYPE_AAAA => a.v6.as_ref().map(|v| &v[..]),
                    _ => None,
                };
                match rdata {
                    Some(rd) => {
                        // The owner is a pointer to the question name (offset 12).
                        out[at..at + 2].copy_from_slice(&[0xc0, 0x0c]);
                        out[at + 2..at + 4].copy_from_slice(&q.qtype.to_be_bytes());
                        out[at + 4..at + 6].copy_from_slice(&wire::CLASS_IN.to_be_bytes());
                        out[at + 6..at + 10].copy_from_slice(&a.ttl.to_be_bytes());
                        out[at + 10..at + 12].copy_from_slice(&(rd.len() as u16).to_be_bytes());
                        out[at + 12..at + 12 + rd.len()].copy_from_slice(rd);
                        at += 12 + rd.len();
                        (wire::RCODE_NOERROR, 1, None)
                    }
                    None => (wire::RCODE_NOERROR, 0, Some(self.soa(self.zone.under_cluster(name)))),
                }
            }
            Found::Node(Node::Empty { in_cluster }) => (wire::RCODE_NOERROR, 0, Some(self.soa(in_cluster))),
            Found::NxDomain { in_cluster } => {
                c.bump(&c.nxdomain, shared);
                (wire::RCODE_NXDOMAIN, 0, Some(self.soa(in_cluster)))
            }
        };
        let ns = match soa {
            Some(s) => {
                out[at..at + s.len()].copy_from_slice(s);
                at += s.len();
                1
            }
            None => 0,
        };
        let ar = match q.edns {
            Some(_) => {
                at = wire::write_opt(out, at, EDNS_SIZE, false, 0);
                1
            }
            None => 0,
        };
        let flags = wire::answer_flags(q.flags, rcode, false, false, false);
        wire::write_header(out, q.id, flags, [1, an, ns, ar]);
        Some(at)
    }

    fn soa(&self, in_cluster: bool) -> &[u8] {
        if in_cluster {
            &self.soa_cluster
        } else {
            &self.soa_root
        }
    }

    fn empty(&self, msg: &[u8], q: Option<&wire::Query>, id: u16, flags: u16, rcode: u8, out: &mut [u8]) -> usize {
        let head = Head {
            id,
            flags,
            rcode,
            tc: false,
        };
        wire::write_empty_answer(msg, q, head, EDNS_SIZE, out)
    }

    fn stats_answer(&self, msg: &[u8], q: &wire::Query, out: &mut [u8]) -> usize {
        let txt = self.counters.sum().to_txt();
        let txt = &txt.as_bytes()[..txt.len().min(255)];
        let qlen = q.question_end;
        out[..qlen].copy_from_slice(&msg[..qlen]);
        let mut at = qlen;
        let rdlen = 1 + txt.len();
        out[at..at + 2].copy_from_slice(&[0xc0, 0x0c]);
        out[at + 2..at + 4].copy_from_slice(&TYPE_TXT.to_be_bytes());
        out[at + 4..at + 6].copy_from_slice(&CLASS_CH.to_be_bytes());
        out[at + 6..at + 10].copy_from_slice(&0u32.to_be_bytes());
        out[at + 10..at + 12].copy_from_slice(&(rdlen as u16).to_be_bytes());
        out[at + 12] = txt.len() as u8;
        out[at + 13..at + 13 + txt.len()].copy_from_slice(txt);
        at += 12 + rdlen;
        let flags = wire::answer_flags(q.flags, wire::RCODE_NOERROR, false, true, false);
        wire::write_header(out, q.id, flags, [1, 1, 0, 0]);
        at
    }
}

/// A running upstream. Dropping it leaves the threads running; `stop` ends them.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    responder: Arc<Responder>,
}

impl Upstream {
    /// Binds UDP (`threads` sockets) and TCP on `spec.listen` (port 0 picks
    /// one port for both) and starts serving.
    pub fn start(spec: &UpstreamSpec) -> Result<Upstream, UpstreamError> {
        let responder = Arc::new(Responder::new(spec)?);
        let threads = spec.threads.max(1);
        let bind_err = |addr, source| UpstreamError::Bind { addr, source };
        // Port 0: a port nobody holds, from a bind without SO_REUSEPORT (the
        // kernel gives a reuseport bind to port 0 ports other reuseport
        // groups of the same user already have).
        let listen = match spec.listen.port() {
            0 => UdpSocket::bind(spec.listen)
                .and_then(|probe| probe.local_addr())
                .map_err(|e| bind_err(spec.listen, e))?,
            _ => spec.listen,
        };
        let first = bind_udp(listen).map_err(|e| bind_err(listen, e))?;
        let addr = first.local_addr().map_err(|e| bind_err(spec.listen, e))?;
        let mut socks = vec![first];
        for _ in 1..threads {
            socks.push(bind_udp(addr).map_err(|e| bind_err(addr, e))?);
        }
        let listener = TcpListener::bind(addr).map_err(|e| bind_err(addr, e))?;
        listener.set_nonblocking(true).map_err(|e| bind_err(addr, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (i, sock) in socks.into_iter().enumerate() {
            let (r, s) = (responder.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name(format!("upstream-udp-{i}"))
                .spawn(move || serve_udp(sock, &r, i, &s))
                .map_err(UpstreamError::Thread)?;
            handles.push(h);
        }
        let (r, s) = (responder.clone(), stop.clone());
        let h = std::thread::Builder::new()
            .name("upstream-tcp".into())
            .spawn(move || serve_tcp(listener, r, s))
            .map_err(UpstreamError::Thread)?;
        handles.push(h);
        Ok(Upstream {
            addr,
            stop,
            threads: handles,
            responder,
        })
    }

    pub fn counts(&self) -> Counts {
        self.responder.counters.sum()
    }

    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for h in self.threads {
            let _ = h.join();
        }
    }

    /// Serves until the process is killed.
    pub fn wait(self) {
        for h in self.threads {
            let _ = h.join();
        }
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_port(true)?;
    // Resolvers under test send bursts of misses; do not drop them here.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(TICK))?;
    Ok(sock)
}

fn serve_udp(sock: UdpSocket, r: &Responder, writer: usize, stop: &AtomicBool) {
    let fd = sock.as_raw_fd();
    let mut rx = Datagrams::new();
    let mut tx = Datagrams::new();
    while !stop.load(Relaxed) {
        let n = match rx.recv(fd, true) {
            Ok(n) => n,
            // Timeouts (to look at `stop`), signals, ICMP errors: go on.
            Err(_) => continue,
        };
        for i in 0..n {
            let Some(buf) = tx.next_buf() else { break };
            if let Some(len) = r.answer(rx.get(i), buf, writer) {
                tx.commit(len, Some((&rx, i)));
            }
        }
        tx.send(fd);
    }
}

fn serve_tcp(listener: TcpListener, r: Arc<Responder>, stop: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let interest = [Interest {
        fd: listener.as_raw_fd(),
        write: false,
    }];
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if open.load(Relaxed) >= MAX_TCP_CONNS {
                    continue; // dropped: closes the connection
                }
                open.fetch_add(1, Relaxed);
                let (r, s, o) = (r.clone(), stop.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("upstream-tcp-conn".into())
                    .spawn(move || {
                        let _ = serve_tcp_conn(stream, &r, &s);
                        o.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = sys::wait(&interest, TICK);
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// RFC 7766 framing: two-byte length, then the message; answers in order.
fn serve_tcp_conn(mut stream: TcpStream, r: &Responder, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TICK))?;
    let writer = r.counters.0.len() - 1;
    let mut buf = vec![0u8; 2 + 65535 + 4096];
    let mut len = 0;
    let mut out = vec![0u8; 2 + 4096];
    let mut pending = Vec::with_capacity(8192);
    while !stop.load(Relaxed) {
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        let mut at = 0;
        while len - at >= 2 {
            let flen = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
            if len - at < 2 + flen {
                break;
            }
            if let Some(n) = r.answer(&buf[at + 2..at + 2 + flen], &mut out[2..], writer) {
                out[..2].copy_from_slice(&(n as u16).to_be_bytes());
                pending.extend_from_slice(&out[..2 + n]);
            }
            at += 2 + flen;
        }
        buf.copy_within(at..len, 0);
        len -= at;
        if !pending.is_empty() {
            stream.write_all(&pending)?;
            pending.clear();
        }
    }
    Ok(())
}

/// Asks a bench upstream for its counters over UDP (`stats.nodens-bench.`
/// CH TXT), waiting at most 1 s per try, 3 tries.
pub fn fetch_counts(addr: SocketAddr) -> Result<Counts, StatsError> {
    let io_err = |source| StatsError::Io { addr, source };
    let local: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(io_err)?;
    sock.connect(addr).map_err(io_err)?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).map_err(io_err)?;
    let id: u16 = rand::random();
    let mut q = vec![0u8; 12];
    wire::write_header(&mut q, id, 0, [1, 0, 0, 0]);
    q.extend_from_slice(STATS_NAME);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&CLASS_CH.to_be_bytes());
    let mut buf = [0u8; 1024];
    let mut last = None;
    for _ in 0..3 {
        sock.send(&q).map_err(io_err)?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let m = &buf[..n];
                    if n >= 12 && m[..2] == id.to_be_bytes() {
                        return parse_stats(m).ok_or(StatsError::NotUpstream { addr });
                    }
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(io_err(last.unwrap_or_else(|| io::ErrorKind::TimedOut.into())))
}

fn parse_stats(m: &[u8]) -> Option<Counts> {
    if u16::from_be_bytes([m[6], m[7]]) != 1 {
        return None;
    }
    let qend = wire::parse_question_end(m)?;
    let rr = wire::read_rr_header(m, qend)?;
    if rr.rtype != TYPE_TXT {
        return None;
    }
    let rdata = &m[rr.ttl_at + 6..rr.end];
    let len = *rdata.first()? as usize;
    let txt = std::str::from_utf8(rdata.get(1..1 + len)?).ok()?;
    Counts::from_txt(txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> UpstreamSpec {
        UpstreamSpec {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            rate_cap: None,
            zone: ZoneSpec {
                names: 50,
                namespaces: 2,
                services: 3,
                cluster_domain: "cluster.local".into(),
            },
            neg_ttl: 60,
        }
    }

    fn query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns as u8];
        q.extend(with_root(name).unwrap());
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    /// (rcode, ancount, nscount, arcount, first answer's RDATA)
    fn ask(r: &Responder, name: &str, qtype: u16, edns: bool) -> (u8, u16, u16, u16, Vec<u8>) {
        let q = query(name, qtype, edns);
        let mut out = [0u8; 512];
        let n = r.answer(&q, &mut out, 0).expect("an answer");
        let m = &out[..n];
        assert_eq!(&m[..2], &[0xab, 0xcd]);
        assert_eq!(m[2] & 0x81, 0x81, "QR and RD");
        assert_eq!(m[3] & 0x80, 0x80, "RA");
        let mut rdata = Vec::new();
        let mut first = true;
        wire::for_each_rr(m, |rr| {
            if first {
                rdata = m[rr.ttl_at + 6..rr.end].to_vec();
                first = false;
            }
        })
        .expect("well-formed records");
        let c = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
        (m[3] & 0xf, c(6), c(8), c(10), rdata)
    }

    #[test]
    fn answers_the_zone() {
        let r = Responder::new(&spec()).unwrap();
        let (rc, an, ns, ar, rd) = ask(&r, "API.s3.example", TYPE_A, false);
        assert_eq!((rc, an, ns, ar), (0, 1, 0, 0));
        assert_eq!(rd, [198, 18, 0, 3]);
        let (rc, an, _, ar, rd) = ask(&r, "api.s3.example", TYPE_AAAA, true);
        assert_eq!((rc, an, ar, rd.len()), (0, 1, 1, 16));
        // NODATA: a service has no AAAA; an ancestor has nothing.
        let head = |x: (u8, u16, u16, u16, Vec<u8>)| (x.0, x.1, x.2);
        assert_eq!(head(ask(&r, "svc1.ns0.svc.cluster.local", TYPE_AAAA, false)), (0, 0, 1));
        assert_eq!(head(ask(&r, "s3.example", TYPE_A, false)), (0, 0, 1));
        // NXDOMAIN with the SOA of the right zone.
        let (rc, an, ns, _, soa) = ask(&r, "api.s3.example.ns0.svc.cluster.local", TYPE_A, false);
        assert_eq!((rc, an, ns), (3, 0, 1));
        assert_eq!(&soa[..4], b"\x02ns\x03");
        assert_eq!(head(ask(&r, "x.flood.example", TYPE_A, false)), (3, 0, 1));
        let c = r.counters.sum();
        assert_eq!((c.queries, c.a, c.aaaa, c.nxdomain), (6, 4, 2, 2));
    }

    #[test]
    fn rate_cap_drops() {
        let mut s = spec();
        s.rate_cap = Some(3);
        let r = Responder::new(&s).unwrap();
        let q = query("api.s3.example", TYPE_A, false);
        let mut out = [0u8; 512];
        let answered = (0..10).filter(|_| r.answer(&q, &mut out, 0).is_some()).count();
        // All ten fall in one or two one-second windows.
        assert!((3..=6).contains(&answered), "{answered}");
        assert_eq!(r.counters.sum().dropped as usize, 10 - answered);
    }

    #[test]
    fn serves_udp_tcp_and_stats() {
        let up = Upstream::start(&spec()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(&query("s0.example", TYPE_A, false), up.addr).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!((buf[3] & 0xf, u16::from_be_bytes([buf[6], buf[7]])), (0, 1));
        assert!(n > 12);

        let mut tcp = TcpStream::connect(up.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let q = query("nope.example", TYPE_AAAA, false);
        for _ in 0..2 {
            tcp.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
            tcp.write_all(&q).unwrap();
        }
        for _ in 0..2 {
            let mut len = [0u8; 2];
            tcp.read_exact(&mut len).unwrap();
            let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
            tcp.read_exact(&mut m).unwrap();
            assert_eq!(m[3] & 0xf, 3);
        }

        let c = fetch_counts(up.addr).unwrap();
        assert_eq!(c, up.counts());
        assert_eq!((c.queries, c.a, c.aaaa, c.tcp, c.nxdomain), (3, 1, 2, 2, 2));
        up.stop();
    }
}
