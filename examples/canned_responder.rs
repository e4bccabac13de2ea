//! The "loopback limit": a minimal UDP DNS responder that answers every query
//! with `NAME 300 IN A 192.0.2.1` for the name asked.
//!
//! It is the baseline of `benches/dnsperf/run.sh` (the best any server can do
//! over loopback with a plain blocking recv/send loop on this machine) and the
//! upstream that nodens and unbound forward to.
//!
//! ```text
//! cargo run --release --example canned_responder -- --listen 127.0.0.1:5400 [--threads N]
//! ```
//!
//! One thread per `--threads`, each with its own SO_REUSEPORT socket; no
//! batching, no parsing beyond skipping the question name.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context, Result};
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser)]
struct Args {
    /// Address to listen on (UDP).
    #[arg(long, default_value = "127.0.0.1:5400")]
    listen: SocketAddr,
    /// Number of threads, each with its own SO_REUSEPORT socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Answer appended after the question: pointer to offset 12, A, IN, TTL 300,
/// RDLENGTH 4, 192.0.2.1.
const ANSWER: [u8; 16] = [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 192, 0, 2, 1];

/// Build the response in `out` from `q`; `None` for anything that is not a
/// single-question query we can echo.
fn respond(q: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // Skip the (uncompressed) question name, then QTYPE and QCLASS.
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    if end > q.len() {
        return None;
    }
    out.clear();
    out.extend_from_slice(&q[..end]);
    out[2] = (q[2] & 0x79) | 0x80; // QR=1, keep OPCODE and RD, clear AA/TC
    out[3] = 0x80; // RA=1, Z=0, RCODE=NOERROR
    out[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // AN=1, NS=0, AR=0 (OPT dropped)
    out.extend_from_slice(&ANSWER);
    Some(())
}

fn serve(sock: UdpSocket) -> Result<()> {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(512);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("recv_from"),
        };
        if respond(&buf[..n], &mut out).is_some() {
            // A send error (e.g. peer gone, ECONNREFUSED) is not fatal.
            let _ = sock.send_to(&out, peer);
        }
    }
}

fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_port(true)?;
    // Generous buffers so bursts from dnsperf are not dropped by the kernel.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into()).with_context(|| format!("bind {addr}"))?;
    Ok(sock.into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.max(1);
    // Bind all sockets before serving so a bind failure is reported at once.
    let socks = (0..threads).map(|_| bind(args.listen)).collect::<Result<Vec<_>>>()?;
    eprintln!("canned_responder: {} thread(s) on {}", threads, args.listen);
    let handles: Vec<_> = socks
        .into_iter()
        .map(|s| std::thread::spawn(move || serve(s)))
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    Ok(())
}
