//! The rolling update, socket side (DESIGN §2): join the port group late,
//! leave it early, drop nothing in between.
//!
//! Owns: deciding whether a predecessor is serving our listen addresses (a
//! plain, non-SO_REUSEPORT bind of the UDP port fails), holding a starting
//! agent out of the SO_REUSEPORT groups until it is ready, and the classic
//! BPF programs (SO_ATTACH_REUSEPORT_CBPF) that steer a group's new packets
//! and connections between the two agents. Must not: hold anything back when
//! nobody else serves the address (an agent restarted after a crash answers
//! at once, as before), or keep a listener alive past its accept loop (the
//! TCP handles kept here are duplicates, dropped on release).
//!
//! How a group is steered: the kernel keeps a group's members in an array in
//! join order and compacts it when one leaves (the last member moves into
//! the hole), so an agent alone on a port holds indices 0..n, and the next
//! agent's sockets come after. A program returning an index picks that
//! member; an index past the end falls back to the kernel's flow hash. A
//! program is the group's, not the socket's, and outlives the agent that
//! attached it, so every agent detaches it when it joins.
//!
//! - Starting beside a predecessor: UDP sockets are created but bound only
//!   once ready (a bound socket gets its share at once, and its queue would
//!   wait for the index); the TCP listener binds, and steers the group to
//!   index 0, the predecessor's listener. At ready: bind, detach, plain hash.
//! - Draining (SIGTERM): UDP sends the group to the other members with
//!   `ret n + random % n` (n: this agent's own sockets, at 0..n; the next
//!   agent runs as many workers on the same node), workers keep reading until
//!   their queues stay empty (`front::udp`); TCP sends the group to index 1
//!   and accepts what already completed its handshake (`front::tcp`).
//!
//! Why not `connect()` to leave a UDP group (connected members are skipped):
//! it sets the group's "has connections" flag for good, after which the
//! kernel picks sockets by the CPU a datagram arrived on instead of the flow
//! hash, for the life of the group: measured here, one socket then got all
//! of a single sender's traffic.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// The predecessor's TCP listener in a group (a lone agent is always at 0).
pub const OLDER: u32 = 0;
/// The next agent's TCP listener (one listener per agent and address).
pub const NEWER: u32 = 1;

/// Whether another process is already serving one of `listen` (the
/// previous agent of a rolling update). Ephemeral ports (0) never are.
pub fn predecessor_serving(listen: &[SocketAddr]) -> bool {
    listen
        .iter()
        .filter(|a| a.port() != 0)
        .any(|&addr| matches!(UdpSocket::bind(addr), Err(e) if e.kind() == io::ErrorKind::AddrInUse))
}

/// Steers the group of `socket` to member `index` for every new packet or connection.
pub fn steer_to(socket: &impl AsRawFd, index: u32) -> io::Result<()> {
    attach(socket, &mut [op(libc::BPF_RET | libc::BPF_K, index)])
}

/// Steers the group of `socket` away from this agent's `own` members
/// (indices 0..own) to `own + random % own`.
pub fn steer_past(socket: &impl AsRawFd, own: u32) -> io::Result<()> {
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    attach(
        socket,
        &mut [
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, random),
            op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, own.max(1)),
            op(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K, own),
            op(libc::BPF_RET | libc::BPF_A, 0),
        ],
    )
}

/// Removes the group's program: the kernel's flow hash over every member.
pub fn unsteer(socket: &impl AsRawFd) -> io::Result<()> {
    // The kernel wants an int even though it reads none.
    let unused: libc::c_int = 0;
    // SAFETY: setsockopt on a live fd with a correctly sized int.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            (&unused as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // ENOENT: no program attached.
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            e => Err(e),
        },
    }
}

fn op(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn attach(socket: &impl AsRawFd, program: &mut [libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt with a sock_fprog pointing at a live program.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A starting agent's sockets, held out of their groups until `release`.
#[derive(Debug, Default)]
pub struct Held {
    /// Unbound UDP sockets and the address each binds at release.
    udp: Vec<(Arc<UdpSocket>, SocketAddr)>,
    /// Duplicates of the TCP listeners (steered to `OLDER` at bind).
    tcp: Vec<TcpListener>,
}

impl Held {
    pub fn new(udp: Vec<(Arc<UdpSocket>, SocketAddr)>, tcp: &[TcpListener]) -> Held {
        tracing::info!("the previous agent is serving; taking no traffic until ready");
        let tcp = tcp.iter().filter_map(|l| l.try_clone().ok()).collect();
        Held { udp, tcp }
    }

    /// Joins every group with plain hashing.
    pub fn release(self) {
        if self.udp.is_empty() && self.tcp.is_empty() {
            return;
        }
        for (socket, addr) in &self.udp {
            if let Err(e) = socket2::SockRef::from(&**socket).bind(&(*addr).into()) {
                tracing::error!(error = %e, %addr, "udp socket cannot bind at readiness; this worker serves nothing");
            }
        }
        for (socket, _) in self.udp.iter().take(1) {
            if let Err(e) = unsteer(&**socket) {
                tracing::warn!(error = %e, "udp group keeps a predecessor's steering program");
            }
        }
        for listener in &self.tcp {
            if let Err(e) = unsteer(listener) {
                tracing::warn!(error = %e, "tcp listener cannot join its group");
            }
        }
        tracing::info!("ready; taking a share of the traffic");
    }
}
