//! A rolling update without a DNS gap (DESIGN §2, issue 8), on loopback with
//! the real binary: two `nodens serve` processes on the same address and port
//! (SO_REUSEPORT, UDP and TCP), a steady client load, and the old one sent
//! SIGTERM mid-load. Every query must get its answer within 1 s.
//!
//! The old agent's UDP sockets leave the port group by `connect` and answer
//! what was queued to them before closing (front::udp::leave_group); its TCP
//! listener steers new connections to the new agent and accepts what already
//! completed its handshake (front::tcp). The shared admin port passes from
//! the old agent to the new one; each answers its own probes through
//! `node.probe_file` (node::admin).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodens::node::admin::{probe, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::server::{free_port, http_get};

/// UDP client sockets (distinct source ports, so the kernel's hash spreads them over both agents).
const CLIENTS: usize = 16;
/// Each client sends one query per tick: 16 × 500/s = 8,000 queries per second.
const TICK: Duration = Duration::from_millis(2);
/// A query not answered within this long counts as lost.
const DEADLINE: Duration = Duration::from_secs(1);
/// Sequential TCP clients (connect, query, answer, close), in parallel.
const TCP_CLIENTS: usize = 2;
const NAME: &str = "kubernetes.default.svc.cluster.local";
/// How long the old agent is frozen with its queues filling before SIGTERM.
const PAUSE: Duration = Duration::from_millis(300);

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Agent {
    child: Child,
    probe_file: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, name: &str, dns: u16, admin: u16) -> Agent {
        let probe_file = dir.join(format!("{name}.probe"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:{dns}\"]\nadmin = \"127.0.0.1:{admin}\"\nworkers = 2\n\
                 [upstream]\nservers = [\"127.0.0.1:9\"]\n\
                 [cluster]\nsource = \"demo\"\n\
                 [node]\nprobe_file = \"{}\"\n",
                probe_file.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_nodens"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("nodens starts");
        Agent { child, probe_file, log }
    }

    /// Waits until this process (not its neighbour) reports ready.
    async fn ready(&self) {
        let file = self.probe_file.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let f = file.clone();
            let ok = tokio::task::spawn_blocking(move || probe(&f, Probe::Ready, Duration::from_secs(1)))
                .await
                .unwrap();
            match ok {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("never ready: {e}; log:\n{}", self.log_text()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn probe_addr(&self) -> SocketAddr {
        std::fs::read_to_string(&self.probe_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    async fn exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit after SIGTERM; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A good answer to one of our queries: QR set, NOERROR, at least one record.
fn answered(msg: &[u8]) -> Option<u16> {
    let ok = msg.len() >= 12 && msg[2] & 0x80 != 0 && msg[3] & 0x0f == 0 && u16::from_be_bytes([msg[6], msg[7]]) > 0;
    ok.then(|| u16::from_be_bytes([msg[0], msg[1]]))
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    late: AtomicU64,
    tcp_ok: AtomicU64,
    tcp_failed: AtomicU64,
    max_latency_us: AtomicU64,
    /// Rcodes of answers that were not a good answer.
    errors: Mutex<Vec<u8>>,
}

/// One UDP client: sends a query per tick until `stop`, matches answers by ID.
async fn udp_client(dns: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> Vec<u16> {
    let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
    let pending: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let receiver = {
        let (socket, pending, tally) = (socket.clone(), pending.clone(), tally.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok(n) = socket.recv(&mut buf).await else { continue };
                let Some(id) = answered(&buf[..n]) else {
                    if n >= 4 {
                        tally.errors.lock().unwrap().push(buf[3] & 0x0f);
                    }
                    continue;
                };
                if let Some(sent) = pending.lock().unwrap().remove(&id) {
                    let waited = sent.elapsed();
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    tally
                        .max_latency_us
                        .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
                    if waited > DEADLINE {
                        tally.late.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    socket.connect(dns).await.unwrap();
    let mut tick = tokio::time::interval(TICK);
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        id = id.wrapping_add(1);
        pending.lock().unwrap().insert(id, Instant::now());
        // A refused send (ICMP from a closed port) is a lost query: it stays pending.
        let _ = socket.send(&query(id)).await;
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    tokio::time::sleep(DEADLINE).await;
    receiver.abort();
    let lost: Vec<u16> = pending.lock().unwrap().keys().copied().collect();
    lost
}

/// One TCP client: a fresh connection per query, as a stub resolver retrying over TCP does.
async fn tcp_client(dns: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        let exchange = async {
            let mut s = TcpStream::connect(dns).await?;
            let q = query(id);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            s.write_all(&framed).await?;
            let len = s.read_u16().await? as usize;
            let mut msg = vec![0; len];
            s.read_exact(&mut msg).await?;
            std::io::Result::Ok(answered(&msg) == Some(id))
        };
        match tokio::time::timeout(DEADLINE, exchange).await {
            Ok(Ok(true)) => tally.tcp_ok.fetch_add(1, Ordering::Relaxed),
            _ => tally.tcp_failed.fetch_add(1, Ordering::Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The sum of every `nodens_responses_total` series in a scrape.
fn responses(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("nodens_responses_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_loses_no_query() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_tcp_port();
    let dns = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let shared_admin = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin_port);

    let old = Agent::start(dir.path(), "old", port, admin_port);
    old.ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let udp: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(udp_client(dns, stop.clone(), tally.clone())))
        .collect();
    let tcp: Vec<_> = (0..TCP_CLIENTS)
        .map(|_| tokio::spawn(tcp_client(dns, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The surge agent starts beside it: same DNS port, shared admin port busy.
    let new = Agent::start(dir.path(), "new", port, admin_port);
    new.ready().await;
    assert_ne!(
        old.probe_addr(),
        new.probe_addr(),
        "each agent has its own probe listener"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The old agent really carried part of the load before it was told to go.
    let (_, old_metrics) = http_get(old.probe_addr(), "/metrics").await;
    let (_, new_metrics) = http_get(new.probe_addr(), "/metrics").await;
    let (by_old, by_new) = (responses(&old_metrics), responses(&new_metrics));
    assert!(
        by_old > 0.0 && by_new > 0.0,
        "load not shared: old {by_old}, new {by_new}"
    );

    // The hard case: SIGTERM finds the old agent with a backlog in its socket
    // queues (a CPU-throttled pod, a burst). It is frozen for PAUSE while its
    // share of the load queues up (UDP datagrams, completed TCP handshakes),
    // gets SIGTERM while frozen, and resumes: everything queued must still
    // be answered, and nothing new may reach it.
    old.signal(libc::SIGSTOP);
    tokio::time::sleep(PAUSE).await;
    let terminated_at = tally.sent.load(Ordering::Relaxed);
    old.terminate();
    old.signal(libc::SIGCONT);
    let status = old.exit().await;
    assert!(status.success(), "old agent exited with {status}");
    // Probes of the new agent never depended on the old one.
    let f = new.probe_file.clone();
    tokio::task::spawn_blocking(move || probe(&f, Probe::Ready, Duration::from_secs(1)))
        .await
        .unwrap()
        .expect("new agent still ready");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut lost = 0;
    for client in udp {
        lost += client.await.unwrap().len();
    }
    for client in tcp {
        client.await.unwrap();
    }
    let t = &*tally;
    let (sent, answered, late) = (
        t.sent.load(Ordering::Relaxed),
        t.answered.load(Ordering::Relaxed),
        t.late.load(Ordering::Relaxed),
    );
    let (tcp_ok, tcp_failed) = (t.tcp_ok.load(Ordering::Relaxed), t.tcp_failed.load(Ordering::Relaxed));
    eprintln!(
        "upgrade: udp sent {sent} (SIGTERM after {terminated_at}), answered {answered}, lost {lost}, \
         later than 1 s {late}, slowest {} µs; old answered {by_old} and new {by_new} before SIGTERM; \
         tcp ok {tcp_ok}, failed {tcp_failed}; error answers (rcodes) {:?}",
        t.max_latency_us.load(Ordering::Relaxed),
        t.errors.lock().unwrap()
    );
    assert_eq!(lost, 0, "UDP queries without an answer");
    assert_eq!(late, 0, "UDP answers later than 1 s");
    assert_eq!(tcp_failed, 0, "TCP queries without an answer");
    assert!(tcp_ok > 20, "too few TCP queries to tell: {tcp_ok}");

    // The shared admin port passed to the new agent.
    let mut served = false;
    for _ in 0..40 {
        if tokio::net::TcpStream::connect(shared_admin).await.is_ok() {
            served = http_get(shared_admin, "/readyz").await.0 == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the new agent never took over the admin port; log:\n{}",
        new.log_text()
    );
    new.terminate();
    assert!(new.exit().await.success());
}
