//! The UDP front (DESIGN §2.1): nodens owns this loop.
//!
//! Owns: the UDP sockets (one SO_REUSEPORT socket per worker thread, so the
//! kernel spreads datagrams across workers), the batched receive and send
//! (`recvmmsg`/`sendmmsg`, Linux), and the hand-off of misses to the runtime.
//! Must not: spawn a task, cross a channel or allocate for a datagram that the
//! guard or the cache answers; block on anything but its own socket.
//!
//! A worker is a plain OS thread blocked in `recvmmsg`. For each datagram it
//! calls `Pipeline::answer_now`; answers collect in per-slot buffers that live
//! as long as the worker, and go out in one `sendmmsg`. A miss copies the
//! datagram once and becomes a task on the tokio runtime, which answers with a
//! non-blocking `sendto` on the same socket when the upstream returns.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::metrics::{Drop, Source, WorkerMetrics};
use crate::pipeline::{Pipeline, Route, Step, Transport};

/// Datagrams per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;
/// Largest query we read; longer datagrams are truncated by the kernel and dropped.
const MAX_QUERY: usize = 4096;
/// Largest UDP answer we write (`edns_udp_size` is at most 4096).
const MAX_ANSWER: usize = 4096;
/// How often a blocked worker wakes to check for shutdown and flush metrics.
const WAKE: Duration = Duration::from_millis(100);
/// Receive buffer asked of the kernel, so a burst waits instead of being lost.
const RECV_BUFFER: usize = 8 << 20;
/// The longest a draining worker reads on (new datagrams still reach it when
/// no next agent is there to take them).
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Batches between metric flushes on a busy worker.
const FLUSH_EVERY: u32 = 64;

/// Binds `count` UDP sockets to `addr` with SO_REUSEPORT. With port 0 the
/// first socket picks the port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = unbound_socket(addr)?;
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// `count` sockets set up as `bind` does but not bound yet: a starting agent
/// binds them once ready (node::handover).
pub fn unbound(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    (0..count.max(1))
        .map(|_| unbound_socket(addr).map(UdpSocket::from))
        .collect()
}

fn unbound_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // SO_RCVBUFFORCE works as root beyond rmem_max; otherwise the capped size is fine.
    if socket.set_recv_buffer_size(RECV_BUFFER).is_ok() {
        force_recv_buffer(&socket);
    }
    socket.set_read_timeout(Some(WAKE))?;
    Ok(socket)
}

fn force_recv_buffer(socket: &Socket) {
    let size = RECV_BUFFER as libc::c_int;
    // SAFETY: a plain setsockopt on an fd we own, with a correctly sized int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One worker thread's state: its socket, and buffers reused for every batch.
pub struct Worker {
    socket: Arc<UdpSocket>,
    pipeline: Arc<Pipeline>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    metrics: WorkerMetrics,
}

/// Receive and send buffers for one batch, at stable heap addresses so the
/// `mmsghdr`s can point into them.
struct Buffers {
    rx: Box<[[u8; MAX_QUERY]]>,
    names: Box<[libc::sockaddr_storage]>,
    rx_iov: Box<[libc::iovec]>,
    rx_hdr: Box<[libc::mmsghdr]>,
    tx: Vec<Vec<u8>>,
    tx_iov: Box<[libc::iovec]>,
    tx_hdr: Box<[libc::mmsghdr]>,
    /// What answered each send slot, for metrics after the send.
    tags: Box<[(Source, u8)]>,
}

// SAFETY: the raw pointers inside the headers point into this struct's own
// boxes and are only used by the thread that owns it.
unsafe impl Send for Buffers {}

impl Buffers {
    fn new() -> Buffers {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let z_iov: libc::iovec = unsafe { zeroed() };
        let z_hdr: libc::mmsghdr = unsafe { zeroed() };
        let z_name: libc::sockaddr_storage = unsafe { zeroed() };
        let mut b = Buffers {
            rx: vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice(),
            names: vec![z_name; BATCH].into_boxed_slice(),
            rx_iov: vec![z_iov; BATCH].into_boxed_slice(),
            rx_hdr: vec![z_hdr; BATCH].into_boxed_slice(),
            tx: (0..BATCH).map(|_| Vec::with_capacity(MAX_ANSWER)).collect(),
            tx_iov: vec![z_iov; BATCH].into_boxed_slice(),
            tx_hdr: vec![z_hdr; BATCH].into_boxed_slice(),
            tags: vec![(Source::Local, 0); BATCH].into_boxed_slice(),
        };
        for i in 0..BATCH {
            b.rx_iov[i] = libc::iovec {
                iov_base: b.rx[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let h = &mut b.rx_hdr[i].msg_hdr;
            h.msg_iov = &mut b.rx_iov[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        }
        b
    }
}

impl Worker {
    pub fn new(
        socket: Arc<UdpSocket>,
        pipeline: Arc<Pipeline>,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> Worker {
        let metrics = pipeline.metrics().worker();
        Worker {
            socket,
            pipeline,
            runtime,
            stop,
            metrics,
        }
    }

    /// Runs until `stop` is set and then the socket's queue stays empty for
    /// one receive timeout; call on a dedicated thread.
    pub fn run(mut self) {
        let mut b = Buffers::new();
        let fd = self.socket.as_raw_fd();
        let mut batches = 0u32;
        // Draining: the app has steered the SO_REUSEPORT group's new
        // datagrams to the next agent (node::handover); keep reading until
        // the queue stays empty, since closing drops what is queued.
        let mut draining: Option<Instant> = None;
        loop {
            if draining.is_none() && self.stop.load(Ordering::Relaxed) {
                draining = Some(Instant::now());
            }
            if draining.is_some_and(|since| since.elapsed() > DRAIN_MAX) {
                break;
            }
            for h in b.rx_hdr.iter_mut() {
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the headers point at BATCH live buffers owned by `b`.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    b.rx_hdr.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        self.metrics.flush();
                        // A whole receive timeout with nothing queued: drained.
                        if draining.is_some() {
                            break;
                        }
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::warn!(error = %e, "udp receive failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                continue;
            }
            let now = Instant::now();
            let answered = self.answer_batch(&mut b, n as usize, now);
            self.send_batch(&mut b, answered);
            let seconds = now.elapsed().as_secs_f64();
            for &(source, rcode) in &b.tags[..answered] {
                self.metrics.response(source, rcode, seconds);
            }
            batches += 1;
            if batches.is_multiple_of(FLUSH_EVERY) {
                self.metrics.flush();
            }
        }
        self.metrics.flush();
    }

    /// Answers what it can of `n` received datagrams into the send slots;
    /// returns how many slots hold answers.
    fn answer_batch(&mut self, b: &mut Buffers, n: usize, now: Instant) -> usize {
        let mut k = 0;
        for i in 0..n {
            let len = b.rx_hdr[i].msg_len as usize;
            let hdr = &b.rx_hdr[i].msg_hdr;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.metrics.drop(Drop::Malformed);
                continue;
            }
            let Some(src) = sockaddr_to_std(&b.names[i], hdr.msg_namelen) else {
                continue;
            };
            let msg = &b.rx[i][..len];
            if len >= 12 && msg[2] & 0x80 == 0 && msg[2] >> 3 & 0xf == 0 {
                // Count the type as asked of plausible queries only: the
                // guard answers the rest, and counts them by rcode.
                let qtype = query_type(msg);
                self.metrics.request(qtype);
            }
            let out = &mut b.tx[k];
            match self.pipeline.answer_now(msg, src, Transport::Udp, now, out) {
                Step::Answered { source, rcode } => {
                    b.tx_iov[k] = libc::iovec {
                        iov_base: out.as_mut_ptr().cast(),
                        iov_len: out.len(),
                    };
                    let h = &mut b.tx_hdr[k].msg_hdr;
                    h.msg_iov = &mut b.tx_iov[k];
                    h.msg_iovlen = 1;
                    h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
                    h.msg_namelen = b.rx_hdr[i].msg_hdr.msg_namelen;
                    b.tags[k] = (source, rcode);
                    k += 1;
                }
                Step::Miss(query, route) => self.spawn_miss(msg, (src, now), query, route, out),
                Step::Drop => self.metrics.drop(Drop::Malformed),
            }
        }
        k
    }

    fn send_batch(&mut self, b: &mut Buffers, count: usize) {
        let fd = self.socket.as_raw_fd();
        let mut sent = 0;
        while sent < count {
            // SAFETY: slots [sent, count) were filled by `answer_batch` and
            // point at buffers and addresses that live in `b`.
            let r = unsafe { libc::sendmmsg(fd, b.tx_hdr[sent..].as_mut_ptr(), (count - sent) as libc::c_uint, 0) };
            if r <= 0 {
                // Skip the datagram the kernel refused (a bad address, a full buffer).
                self.metrics.drop(Drop::SendFailed);
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }

    fn spawn_miss(
        &mut self,
        msg: &[u8],
        (src, started): (SocketAddr, Instant),
        query: crate::wire::Query,
        route: Route,
        out: &mut Vec<u8>,
    ) {
        let pipeline = &self.pipeline;
        let Some(permit) = pipeline.admit() else {
            // The miss path is full: answer SERVFAIL now rather than queue without bound.
            pipeline.write_servfail(msg, &query, out);
            send_to(&self.socket, out, src);
            self.metrics.drop(Drop::Overload);
            self.metrics.response(Source::Local, crate::wire::RCODE_SERVFAIL, 0.0);
            return;
        };
        let msg = msg.to_vec();
        let pipeline = pipeline.clone();
        let socket = self.socket.clone();
        self.runtime.spawn(async move {
            let mut out = Vec::with_capacity(512);
            let (source, rcode) = pipeline
                .resolve_miss(&msg, &query, route, Transport::Udp, src.ip(), permit, &mut out)
                .await;
            if !send_to(&socket, &out, src) {
                pipeline.metrics().drop(Drop::SendFailed);
            }
            pipeline
                .metrics()
                .response(source, rcode, started.elapsed().as_secs_f64());
        });
    }
}

/// Sends one answer without blocking: a full send buffer drops this answer
/// (the client retries) instead of stalling a runtime thread.
fn send_to(socket: &UdpSocket, buf: &[u8], to: SocketAddr) -> bool {
    let to = SockAddr::from(to);
    // SAFETY: `buf` and `to` are valid for the duration of the call.
    let r = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            to.as_ptr().cast(),
            to.len(),
        )
    };
    r == buf.len() as isize
}

/// The query type, if the question can be found quickly; 0 otherwise.
fn query_type(msg: &[u8]) -> u16 {
    let mut at = 12;
    while let Some(&len) = msg.get(at) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        at += 1 + len as usize;
    }
    match msg.get(at + 1..at + 3) {
        Some(t) if msg.get(at) == Some(&0) => u16::from_be_bytes([t[0], t[1]]),
        _ => 0,
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let v6 = SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id);
            Some(SocketAddr::V6(v6))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_type_reads_plain_questions() {
        let mut m = vec![0u8; 12];
        m.extend_from_slice(b"\x01a\x00\x00\x1c\x00\x01");
        assert_eq!(query_type(&m), 28);
        assert_eq!(query_type(&m[..14]), 0);
    }

    #[test]
    fn reuseport_sockets_share_one_port() {
        let s = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = s[0].local_addr().unwrap().port();
        assert!(s.iter().all(|s| s.local_addr().unwrap().port() == port));
    }
}
