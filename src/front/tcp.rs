//! The TCP front (RFC 7766): low rate, bounded in every dimension.
//!
//! Owns: the listeners, 2-byte length framing, and the limits: connections at
//! once (a permit taken *before* accept, so excess clients wait in the kernel
//! backlog, as mini-redis does), idle time between queries, and query size.
//! Must not: hold a connection open past shutdown, or read a length prefix
//! larger than `tcp.max_message_size` (the connection is closed instead).
//!
//! Queries on one connection are answered in order; pipelined queries are
//! read as soon as the previous answer is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::metrics::{Drop, Proto, Source};
use crate::pipeline::{Pipeline, Step, Transport};

/// The limits of the TCP front, from `[tcp]` in the config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_message_size: u16,
}

/// Binds a TCP listener (with SO_REUSEPORT, like the UDP sockets, so a new
/// agent can bind beside the old one during a rolling update).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// How long a draining listener waits for another queued connection before it closes.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The longest a draining listener keeps accepting (steering failed: it still gets new ones).
const DRAIN_MAX: Duration = Duration::from_secs(1);
/// A draining connection closes once idle this long.
const DRAIN_IDLE: Duration = Duration::from_millis(250);

fn start_draining(listener: &TcpListener) -> Instant {
    // Steer new connections to the next agent (node::handover).
    if let Err(e) = crate::node::handover::steer_to(listener, crate::node::handover::NEWER) {
        tracing::debug!(error = %e, "tcp listener cannot steer new connections away; draining anyway");
    }
    Instant::now()
}

/// Accepts connections until `shutdown` turns true; returns once every
/// connection has finished its current query and closed.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    // Draining: new connections are steered to the group's newer member; what
    // already completed its handshake here is accepted and answered until
    // the queue stays empty, so closing the listener resets no client.
    let mut draining: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("never closed"),
            _ = stopped(&mut shutdown), if draining.is_none() => {
                draining = Some(start_draining(&listener));
                continue;
            }
        };
        if draining.is_some_and(|since| since.elapsed() > DRAIN_MAX) {
            break;
        }
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut shutdown), if draining.is_none() => {
                draining = Some(start_draining(&listener));
                continue;
            }
            _ = tokio::time::sleep(DRAIN_QUIET), if draining.is_some() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let pipeline = pipeline.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            pipeline.metrics().tcp_connections.inc();
            if let Err(e) = connection(stream, peer, &pipeline, limits, shutdown).await {
                tracing::debug!(error = %e, %peer, "tcp connection ended");
            }
            pipeline.metrics().tcp_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it is gone.
    let _ = connections.acquire_many(limits.max_connections as u32).await;
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    pipeline: &Pipeline,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut msg = Vec::new();
    let mut out = Vec::with_capacity(512);
    let mut framed = Vec::with_capacity(514);
    let mut draining = false;
    loop {
        // On shutdown a query already on its way is still answered: the
        // connection closes once idle for DRAIN_IDLE instead of at once.
        // (`read` is cancel-safe, so the length prefix is read by hand.)
        let mut deadline = tokio::time::Instant::now() + if draining { DRAIN_IDLE } else { limits.idle_timeout };
        let mut prefix = [0u8; 2];
        let mut have = 0;
        while have < 2 {
            tokio::select! {
                r = tokio::time::timeout_at(deadline, stream.read(&mut prefix[have..])) => match r {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => have += n,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()), // idle: RFC 7766 §6.2.3 lets the server close
                },
                _ = stopped(&mut shutdown), if !draining => {
                    draining = true;
                    deadline = deadline.min(tokio::time::Instant::now() + DRAIN_IDLE);
                }
            }
        }
        let len = u16::from_be_bytes(prefix);
        if len < 12 || len > limits.max_message_size {
            // The length alone says this is no query we accept; reading on
            // would let a client make us buffer what it chooses.
            pipeline.metrics().drop(Drop::Malformed);
            return Ok(());
        }
        msg.resize(len as usize, 0);
        match tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let started = Instant::now();
        if let Ok(q) = crate::wire::parse_query(&msg) {
            pipeline.metrics().request(Proto::Tcp, q.qtype);
        }
        let (source, rcode) = match pipeline.answer_now(&msg, peer, Transport::Tcp, started, &mut out) {
            Step::Answered { source, rcode } => (source, rcode),
            Step::Drop => {
                pipeline.metrics().drop(Drop::Malformed);
                continue;
            }
            Step::Miss(query, route) => match pipeline.admit() {
                Some(permit) => {
                    pipeline
                        .resolve_miss(&msg, &query, route, Transport::Tcp, peer.ip(), permit, &mut out)
                        .await
                }
                None => {
                    pipeline.write_servfail(&msg, &query, &mut out);
                    pipeline.metrics().drop(Drop::Overload);
                    (Source::Local, crate::wire::RCODE_SERVFAIL)
                }
            },
        };
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
        pipeline
            .metrics()
            .response(source, rcode, started.elapsed().as_secs_f64());
    }
}

/// Resolves once shutdown is signalled (the watch guard is not held across an await).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
