//! The raw syscalls the bench's loops need and std does not offer: batched
//! UDP receive and send (`recvmmsg`/`sendmmsg`, up to [`BATCH`] datagrams per
//! call), `ppoll` over several sockets with a sub-millisecond timeout, and a
//! 1 ns timer slack so the open-loop pacer wakes when it asked to.
//!
//! Owns every `unsafe` block of nodens-bench. Must not: allocate per call,
//! or keep pointers into a buffer past the call that used them (the message
//! headers are rebuilt before each call, so the structs can move freely).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;
use std::ptr::null_mut;
use std::time::Duration;

/// Datagrams per `recvmmsg`/`sendmmsg` call: as nodens' own front uses.
pub const BATCH: usize = 32;
/// Room per datagram. Bench queries are < 300 bytes and answers without
/// EDNS < 512; the upstream reads queries. A larger datagram is truncated,
/// which the parsers then reject.
pub const SLOT: usize = 2048;

/// `BATCH` datagram buffers with their peer addresses, filled by one call.
pub struct Datagrams {
    buf: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    addr_lens: [libc::socklen_t; BATCH],
    iov: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    /// Datagrams received (after `recv`) or queued (before `send`).
    n: usize,
}

impl Default for Datagrams {
    fn default() -> Self {
        Self::new()
    }
}

impl Datagrams {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which all-zero bytes are a valid value (null pointers, zero lengths).
        let (addrs, iov, hdrs) = unsafe { (Box::new(zeroed()), Box::new(zeroed()), Box::new(zeroed())) };
        Datagrams {
            buf: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            addrs,
            addr_lens: [0; BATCH],
            iov,
            hdrs,
            n: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_full(&self) -> bool {
        self.n == BATCH
    }

    /// Datagram `i` of the last `recv`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.buf[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// The buffer of the next datagram to queue for `send`; `None` when full.
    pub fn next_buf(&mut self) -> Option<&mut [u8]> {
        (self.n < BATCH).then(|| &mut self.buf[self.n * SLOT..(self.n + 1) * SLOT])
    }

    /// Queues the `len` bytes written into `next_buf()`, to the peer of
    /// datagram `reply_to` of `from` (an answer), or to the socket's connected
    /// peer when `reply_to` is `None`.
    pub fn commit(&mut self, len: usize, reply_to: Option<(&Datagrams, usize)>) {
        let i = self.n;
        debug_assert!(i < BATCH && len <= SLOT);
        self.lens[i] = len;
        match reply_to {
            Some((from, j)) => {
                self.addrs[i] = from.addrs[j];
                self.addr_lens[i] = from.addr_lens[j];
            }
            None => self.addr_lens[i] = 0,
        }
        self.n += 1;
    }

    /// Points every header at its buffer; `lens` of 0 means "receive up to SLOT".
    fn prepare(&mut self, count: usize, receiving: bool) {
        for i in 0..count {
            let len = if receiving { SLOT } else { self.lens[i] };
            self.iov[i] = libc::iovec {
                iov_base: self.buf[i * SLOT..].as_mut_ptr().cast(),
                iov_len: len,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            let named = receiving || self.addr_lens[i] != 0;
            h.msg_name = if named {
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast()
            } else {
                null_mut()
            };
            h.msg_namelen = if receiving {
                size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.addr_lens[i]
            };
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Receives up to `BATCH` datagrams. `wait`: block for the first one
    /// (then take what is queued, MSG_WAITFORONE); otherwise never block.
    /// Returns the count; `WouldBlock` when nothing was queued.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        self.n = 0;
        self.prepare(BATCH, true);
        let flags = if wait { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        // SAFETY: each header points at buffers owned by `self` that stay
        // alive and unborrowed for the duration of the call; the kernel
        // writes at most `iov_len`/`msg_namelen` bytes into them.
        let r = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as libc::c_uint, flags, null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        for i in 0..self.n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
        }
        Ok(self.n)
    }

    /// Sends every queued datagram on a blocking socket, then empties the
    /// queue. A datagram the kernel refuses (e.g. ECONNREFUSED after an ICMP
    /// port unreachable) is skipped: its query will time out, which is what
    /// a client would see. Returns how many were refused.
    pub fn send(&mut self, fd: RawFd) -> usize {
        let total = self.n;
        self.prepare(total, false);
        let mut at = 0;
        let mut refused = 0;
        while at < total {
            // SAFETY: as in `recv`; the headers from `at` on are valid and
            // point at initialised bytes of `self.buf`.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[at..].as_mut_ptr(), (total - at) as libc::c_uint, 0) };
            if r > 0 {
                at += r as usize;
            } else if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else {
                at += 1;
                refused += 1;
            }
        }
        self.n = 0;
        refused
    }
}

/// What to wait for on one descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Interest {
    pub fd: RawFd,
    pub write: bool,
}

/// Waits until one of `fds` is readable (or writable, when asked) or
/// `timeout` passes. At most 64 descriptors (the bench opens far fewer).
pub fn wait(fds: &[Interest], timeout: Duration) -> io::Result<()> {
    const MAX: usize = 64;
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX];
    let n = fds.len().min(MAX);
    for (p, i) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = i.fd;
        p.events = libc::POLLIN | if i.write { libc::POLLOUT } else { 0 };
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds[..n]` is a valid array of pollfd and `ts` a valid
    // timespec, both on this stack frame for the duration of the call.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Asks the kernel to wake this thread within 1 ns of the requested time
/// instead of the default 50 µs slack: the pacer's intervals at 20k qps and
/// more are shorter than that. Best effort.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

// SAFETY: the raw pointers inside (iovec, mmsghdr) only ever point into the
// struct's own heap buffers and are rewritten before every syscall, so
// moving the struct to another thread moves everything they refer to.
unsafe impl Send for Datagrams {}
