//! The hub at scale (DESIGN §5, §9): one fake API server holding 10,000
//! Services and 100,000 endpoints under steady churn, one or two `nodens
//! hub` processes watching it, and N simulated node agents in this process,
//! each with its own HTTP/2 stream which it receives and decodes in full.
//! Then the same API server against N' direct watchers (the `kubernetes`
//! source, each with its own index), to compare what the API server sees.
//!
//! ```text
//! cargo run --release --example hub_scale -- [--agents 1000] [--hubs 1] [--rate 20] [--duration 30] [--direct 10]
//! ```
//!
//! Prints a markdown table. Each hub is this program re-run as a child
//! (`--role hub`), so its CPU (utime + stime) and RSS are read from
//! /proc/<pid> alone. The fake API server (tests/it/support/kube_api.rs) runs
//! on its own runtime thread, `kubeapi`, whose CPU stands for the API
//! server's cost. Each change is stamped just before the fake API server
//! takes it; an agent records the time it holds the decoded delta that
//! carries it (a slice update marks its first endpoint 10.200.x.y, a new
//! service its ClusterIP 10.201.x.y, x.y = the change number). Agent 0
//! applies its stream to a real index (the others decode and drop: they
//! share its index to save memory, DESIGN §9 allows it).

#[allow(dead_code, clippy::all)]
#[path = "../tests/it/support/kube_api.rs"]
mod kube_api;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use kube_api::{endpoint_slice, headless_service, service, FakeKubeApi, Resource, Verb};
use nodens::cluster::codec::Frame;
use nodens::cluster::index::new_index;
use nodens::cluster::model::{Change, ServiceKind};
use nodens::cluster::source::hub::Subscription;
use nodens::cluster::source::kubernetes;
use nodens::config::{Config, SourceKind};
use nodens::hub::{Hub, HubSource};
use serde_json::Value;

#[derive(Parser, Debug)]
struct Args {
    /// Simulated node agents on the hubs.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Hub processes (agents are spread over them).
    #[arg(long, default_value_t = 1)]
    hubs: usize,
    /// Services (one EndpointSlice each).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per slice.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Changes per second at the API server.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds of churn.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Direct watchers for the comparison (0: skip).
    #[arg(long, default_value_t = 10)]
    direct: usize,
    /// Internal: `hub` runs a hub child on the kubeconfig.
    #[arg(long, hide = true)]
    role: Option<String>,
    #[arg(long, hide = true)]
    kubeconfig: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.role.as_deref() == Some("hub") {
        return hub_child(args.kubeconfig.context("--kubeconfig")?);
    }
    run(args)
}

/// A hub child: prints its addresses, serves until its stdin closes.
fn hub_child(kubeconfig: PathBuf) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = Config::default();
        config.hub.listen = "127.0.0.1:0".parse()?;
        config.hub.admin = "127.0.0.1:0".parse()?;
        config.hub.source = SourceKind::Kubernetes;
        config.cluster.kubeconfig = Some(kubeconfig);
        let source = HubSource::from_config(&config).await?;
        let hub = Hub::start(&config, source)?;
        println!("READY {} {}", hub.listen_addr(), hub.admin_addr());
        std::io::stdout().flush()?;
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        })
        .await?;
        hub.shutdown().await;
        Ok(())
    })
}

/// A hub child process and its addresses.
struct HubProc {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl HubProc {
    fn spawn(kubeconfig: &std::path::Path) -> Result<HubProc> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--role", "hub", "--kubeconfig"])
            .arg(kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a hub child")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, listen, admin] = words[..] else {
            bail!("hub child said {line:?}")
        };
        Ok(HubProc {
            child,
            listen: listen.parse()?,
            admin: admin.parse()?,
        })
    }

    /// utime + stime, seconds.
    fn cpu(&self) -> f64 {
        proc_cpu(&format!("/proc/{}/stat", self.child.id()))
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a /proc stat file, seconds.
fn proc_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5); after the name, the state is field 3 → index 0.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / tck
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.starts_with(prefix))
                .unwrap_or(false)
        })
        .map(|t| proc_cpu(&t.path().join("stat").display().to_string()))
        .sum()
}

/// The cluster: `services` services in 100 namespaces, one slice each with
/// `endpoints` endpoints; every tenth service headless.
fn cluster(services: usize, endpoints: usize) -> Vec<Value> {
    let mut objects = Vec::with_capacity(2 * services);
    for i in 0..services {
        let (ns, name) = (format!("ns-{:03}", i % 100), format!("svc-{i:05}"));
        if i % 10 == 9 {
            objects.push(headless_service(&ns, &name));
        } else {
            objects.push(service(&ns, &name, &[&format!("10.96.{}.{}", i / 256, i % 256)]));
        }
        objects.push(slice(i, endpoints, None));
    }
    objects
}

fn endpoint_ip(i: usize, j: usize, endpoints: usize) -> String {
    let n = i * endpoints + j;
    format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)
}

/// Service `i`'s slice; with a change number, its first endpoint marks it.
fn slice(i: usize, endpoints: usize, change: Option<usize>) -> Value {
    let mut addrs: Vec<String> = (0..endpoints).map(|j| endpoint_ip(i, j, endpoints)).collect();
    if let Some(k) = change {
        addrs[0] = format!("10.200.{}.{}", k / 256, k % 256);
    }
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    endpoint_slice(
        &format!("ns-{:03}", i % 100),
        &format!("svc-{i:05}-abcde"),
        &format!("svc-{i:05}"),
        &addrs,
    )
}

/// The change numbers a delta carries.
fn markers(changes: &[Change]) -> impl Iterator<Item = usize> + '_ {
    let mark = |ip: &IpAddr, b: u8| match ip {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, b] => Some(v4.octets()[2] as usize * 256 + v4.octets()[3] as usize),
        _ => None,
    };
    changes.iter().filter_map(move |c| match c {
        Change::UpsertSlice(s) => s.endpoints.first()?.addresses.first().and_then(|ip| mark(ip, 200)),
        Change::UpsertService(s) => match &s.kind {
            ServiceKind::ClusterIp(ips) => ips.first().and_then(|ip| mark(ip, 201)),
            _ => None,
        },
        _ => None,
    })
}

/// What every agent shares: the change stamps and per-change arrival counts.
struct Board {
    t0: Instant,
    /// When change k went to the API server, ns after t0 (0: not yet).
    stamps: Vec<AtomicU64>,
    /// The latest arrival of change k over all agents, ns after t0.
    last: Vec<AtomicU64>,
    arrived: Vec<AtomicUsize>,
    synced: AtomicUsize,
    snapshot_bytes: AtomicU64,
    delta_bytes: AtomicU64,
    heartbeat_bytes: AtomicU64,
    snapshots: AtomicU64,
    retries: AtomicU64,
    /// Every (agent, change) arrival, µs after the stamp.
    each: std::sync::Mutex<Histogram<u64>>,
}

impl Board {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// One simulated agent: its own stream, decoded in full; agent 0 also applies it to an index.
async fn agent(id: usize, hub: SocketAddr, board: Arc<Board>, apply: bool) -> Result<()> {
    // Retried as the real source does (without its index: a failed agent would stall the run).
    let mut tries = 0;
    let mut sub = loop {
        match Subscription::open(hub, None, None).await {
            Ok(sub) => break sub,
            Err(e) if tries < 20 => {
                tries += 1;
                board.retries.fetch_add(1, Ordering::Relaxed);
                if tries == 1 && id.is_multiple_of(100) {
                    eprintln!("agent {id}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (mut writer, _index) = new_index();
    let mut synced = false;
    loop {
        let (frame, size) = match sub.next().await {
            Ok(f) => f,
            Err(e) => {
                if id == 0 {
                    eprintln!("agent 0: {e}");
                }
                return Ok(());
            }
        };
        match frame {
            Frame::Snapshot(s) => {
                board.snapshot_bytes.fetch_add(size as u64, Ordering::Relaxed);
                board.snapshots.fetch_add(1, Ordering::Relaxed);
                if apply {
                    writer.replace_all(s.services, s.slices);
                }
                if !synced {
                    synced = true;
                    board.synced.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Delta { changes, .. } => {
                let now = board.now();
                board.delta_bytes.fetch_add(size as u64, Ordering::Relaxed);
                for k in markers(&changes) {
                    let Some(stamp) = board.stamps.get(k).map(|s| s.load(Ordering::Acquire)) else {
                        continue;
                    };
                    if stamp == 0 {
                        continue;
                    }
                    let micros = now.saturating_sub(stamp) / 1000;
                    board.each.lock().unwrap().saturating_record(micros.max(1));
                    board.last[k].fetch_max(now, Ordering::Relaxed);
                    board.arrived[k].fetch_add(1, Ordering::Relaxed);
                }
                if apply {
                    writer.apply_batch(changes);
                }
            }
            Frame::Heartbeat { .. } => {
                board.heartbeat_bytes.fetch_add(size as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn get_metrics(admin: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
        .unwrap_or(0.0)
}

async fn ready(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.starts_with("HTTP/1.1 200")
}

fn pct(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "–".into();
    }
    format!("{:.0} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

fn run(args: Args) -> Result<()> {
    let n_changes = (args.rate as u64 * args.duration) as usize;
    if n_changes > 65_000 {
        bail!("at most 65,000 changes (rate × duration): they are numbered in two address octets");
    }
    // The fake API server on its own thread; agents and direct watchers on a 2-thread runtime.
    let api_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kubeapi")
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agents")
        .enable_all()
        .build()?;

    let t = Instant::now();
    let objects = cluster(args.services, args.endpoints);
    let api = Arc::new(api_rt.block_on(FakeKubeApi::start(objects)));
    eprintln!(
        "fake API server: {} services, {} endpoints, loaded in {:.1?}",
        args.services,
        args.services * args.endpoints,
        t.elapsed()
    );
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.kubeconfig_file(dir.path());

    // Hubs.
    let api_cpu0 = threads_cpu("kubeapi");
    let t = Instant::now();
    let hubs: Vec<HubProc> = (0..args.hubs)
        .map(|_| HubProc::spawn(&kubeconfig))
        .collect::<Result<_>>()?;
    rt.block_on(async {
        for h in &hubs {
            while !ready(h.admin).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let hub_sync = t.elapsed();
    let api_cpu_hubs = threads_cpu("kubeapi") - api_cpu0;
    let hub_cpu_sync: Vec<f64> = hubs.iter().map(HubProc::cpu).collect();
    eprintln!("{} hub(s) synced in {hub_sync:.1?}", args.hubs);

    // Agents, all at once.
    let board = Arc::new(Board {
        t0: Instant::now(),
        stamps: (0..n_changes).map(|_| AtomicU64::new(0)).collect(),
        last: (0..n_changes).map(|_| AtomicU64::new(0)).collect(),
        arrived: (0..n_changes).map(|_| AtomicUsize::new(0)).collect(),
        synced: AtomicUsize::new(0),
        snapshot_bytes: AtomicU64::new(0),
        delta_bytes: AtomicU64::new(0),
        heartbeat_bytes: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        each: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let t = Instant::now();
    let agents: Vec<_> = (0..args.agents)
        .map(|i| {
            let hub = hubs[i % hubs.len()].listen;
            rt.spawn(agent(i, hub, board.clone(), i == 0))
        })
        .collect();
    let connected = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while board.synced.load(Ordering::Relaxed) < args.agents {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    });
    if !connected {
        bail!(
            "only {} of {} agents got a snapshot within 120 s",
            board.synced.load(Ordering::Relaxed),
            args.agents
        );
    }
    let connect_all = t.elapsed();
    let hub_cpu_connect: Vec<f64> = hubs.iter().map(HubProc::cpu).collect();
    eprintln!("{} agents have their snapshot after {connect_all:.1?}", args.agents);

    // Churn: `rate` changes per second, paced from a plain thread.
    let churn = {
        let (api, board) = (api.clone(), board.clone());
        let (rate, services, endpoints) = (args.rate, args.services, args.endpoints);
        std::thread::spawn(move || {
            let start = Instant::now();
            for k in 0..n_changes {
                let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let obj = if k % 10 == 9 {
                    service(
                        "churn",
                        &format!("new-{k:05}"),
                        &[&format!("10.201.{}.{}", k / 256, k % 256)],
                    )
                } else {
                    slice((k * 7919) % services, endpoints, Some(k))
                };
                board.stamps[k].store(board.now().max(1), Ordering::Release);
                if k % 10 == 9 {
                    api.create(obj);
                } else {
                    api.update(obj);
                }
            }
        })
    };
    let cpu_before_churn: Vec<f64> = hubs.iter().map(HubProc::cpu).collect();
    let t = Instant::now();
    churn.join().expect("the churn thread");
    let all_arrived = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if board.arrived.iter().all(|a| a.load(Ordering::Relaxed) >= args.agents) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    let churn_time = t.elapsed();
    let hub_cpu_churn: Vec<f64> = hubs
        .iter()
        .zip(&cpu_before_churn)
        .map(|(h, before)| h.cpu() - before)
        .collect();
    let hub_rss: Vec<(f64, f64)> = hubs.iter().map(HubProc::rss).collect();
    let hub_metrics: Vec<String> = rt.block_on(async {
        let mut v = Vec::new();
        for h in &hubs {
            v.push(get_metrics(h.admin).await);
        }
        v
    });
    let mut lat_all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let lat_each = board.each.lock().unwrap().clone();
    let mut complete = 0;
    for k in 0..n_changes {
        let (stamp, last) = (
            board.stamps[k].load(Ordering::Relaxed),
            board.last[k].load(Ordering::Relaxed),
        );
        if board.arrived[k].load(Ordering::Relaxed) >= args.agents && last >= stamp {
            complete += 1;
            lat_all.saturating_record(((last - stamp) / 1000).max(1));
        }
    }
    for a in agents {
        a.abort();
    }

    // Hub-mode API-server load (everything so far was the hubs').
    let api_watches_hub: usize = Resource::ALL.iter().map(|r| api.watch_requests(*r)).sum();
    let api_lists_hub: usize = Resource::ALL.iter().map(|r| api.list_requests(*r)).sum();

    // Direct mode: N' kubernetes sources, each with its own index.
    let mut direct = None;
    if args.direct > 0 {
        let before = api.requests().len();
        let cpu0 = threads_cpu("kubeapi");
        let agents_cpu0 = threads_cpu("agents");
        let t = Instant::now();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let handles: Vec<_> = rt.block_on(async {
            (0..args.direct)
                .map(|_| {
                    let (writer, index) = new_index();
                    let metrics = nodens::metrics::Metrics::new(prometheus::Registry::new())
                        .expect("metrics")
                        .cluster;
                    let task = tokio::spawn(kubernetes::run(api.client(), writer, metrics, stopped.clone()));
                    (task, index)
                })
                .collect()
        });
        rt.block_on(async {
            while !handles.iter().all(|(_, i)| i.is_synced()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Let the watches open.
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        let sync = t.elapsed();
        let reqs: Vec<_> = api.requests().into_iter().skip(before).collect();
        let watches = reqs.iter().filter(|r| r.verb == Verb::Watch).count();
        let lists = reqs.iter().filter(|r| r.verb == Verb::List).count();
        let api_cpu = threads_cpu("kubeapi") - cpu0;
        let agent_cpu = threads_cpu("agents") - agents_cpu0;
        let _ = stop.send(true);
        rt.block_on(async {
            for (task, _) in handles {
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
        });
        direct = Some((sync, watches, lists, api_cpu, agent_cpu));
    }
    drop(hubs);

    // The report.
    let n = args.agents as f64;
    let sent = |kind: &str| -> f64 {
        hub_metrics
            .iter()
            .map(|m| metric(m, &format!("nodens_hub_bytes_sent_total{{kind=\"{kind}\"}}")))
            .sum()
    };
    let resnaps: f64 = hub_metrics
        .iter()
        .map(|m| metric(m, r#"nodens_hub_snapshots_sent_total{reason="behind"}"#))
        .sum();
    let snapshot_size = metric(&hub_metrics[0], "nodens_hub_snapshot_bytes");
    let changes_applied = n_changes.max(1) as f64;
    println!();
    println!(
        "### hub_scale: {} services / {} endpoints, {} agents, {} hub(s), {} changes/s for {} s",
        args.services,
        args.services * args.endpoints,
        args.agents,
        args.hubs,
        args.rate,
        args.duration
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| API server, hub mode: watch connections / list requests (pages of 500) | {api_watches_hub} / {api_lists_hub} (for {} agents) |",
        args.agents
    );
    if let Some((sync, watches, lists, api_cpu, agent_cpu)) = direct {
        let d = args.direct as f64;
        println!(
            "| API server, direct mode, measured with {} watchers: watches / lists | {watches} / {lists} ({:.0} / {:.0} per agent; ×{} agents = {:.0} / {:.0}) |",
            args.direct,
            watches as f64 / d,
            lists as f64 / d,
            args.agents,
            watches as f64 / d * n,
            lists as f64 / d * n
        );
        println!(
            "| API-server CPU (fake, JSON) for the initial lists: per hub / per direct agent | {:.2} s / {:.2} s |",
            api_cpu_hubs / args.hubs as f64,
            api_cpu / d
        );
        println!(
            "| direct agent: CPU to list and index / time for {} to sync at once | {:.2} s / {sync:.1?} |",
            args.direct,
            agent_cpu / d
        );
    }
    println!("| hub sync (list 2 resources, first snapshot ready) | {hub_sync:.1?} |");
    for (i, h) in hub_cpu_sync.iter().enumerate() {
        println!(
            "| hub {i} CPU: sync / {} agents' snapshots / churn | {h:.2} s / {:.2} s / {:.2} s ({:.1} % of a core) |",
            args.agents.div_ceil(args.hubs),
            hub_cpu_connect[i] - h,
            hub_cpu_churn[i],
            100.0 * hub_cpu_churn[i] / churn_time.as_secs_f64()
        );
        println!(
            "| hub {i} RSS now / peak | {:.0} MiB / {:.0} MiB |",
            hub_rss[i].0, hub_rss[i].1
        );
    }
    println!(
        "| snapshot size / all {} agents have one after | {:.2} MiB / {connect_all:.1?} |",
        args.agents,
        snapshot_size / 1048576.0
    );
    println!(
        "| bytes per change per agent (delta frames, hub count / agent count) | {:.0} / {:.0} |",
        sent("delta") / changes_applied / n,
        board.delta_bytes.load(Ordering::Relaxed) as f64 / changes_applied / n
    );
    println!(
        "| heartbeat bytes per agent per second | {:.1} |",
        sent("heartbeat") / n / churn_time.as_secs_f64()
    );
    println!(
        "| change → all {} agents: p50 / p99 / max ({complete} of {n_changes} changes reached all{}) | {} / {} / {} |",
        args.agents,
        if all_arrived { "" } else { "; NOT ALL" },
        pct(&lat_all, 0.5),
        pct(&lat_all, 0.99),
        pct(&lat_all, 1.0)
    );
    println!(
        "| change → one agent (every agent × change): p50 / p99 | {} / {} |",
        pct(&lat_each, 0.5),
        pct(&lat_each, 0.99)
    );
    println!("| resnaps (snapshots for subscribers behind the history) | {resnaps:.0} |");
    println!(
        "| snapshots received by agents / subscription retries | {} / {} |",
        board.snapshots.load(Ordering::Relaxed),
        board.retries.load(Ordering::Relaxed)
    );
    Ok(())
}
