//! Composition (linkerd2-proxy's shape): `App::build` turns a validated
//! `Config` into bound sockets and a pipeline and reports the bound
//! addresses; `App::spawn` starts the workers; `Running::shutdown` drains.
//!
//! Owns: the lifecycle. Must not: parse config or answer queries itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::{AdminError, Readiness};
use crate::cluster::authority::{Authority, ZoneSettings};
use crate::cluster::index::{new_index, IndexHandle, IndexWriter};
use crate::cluster::source::{hub, kubernetes, static_file};
use crate::config::{CacheConfig, ClusterConfig, Config, ConfigError, PodsMode, SourceKind, UpstreamConfig};
use crate::front::{tcp, udp};
use crate::metrics::ClusterMetrics;
use crate::metrics::Metrics;
use crate::node::admin::Admin;
use crate::pipeline::{Live, Pipeline, Stages};
use crate::reload::{ConfigSource, Reload, Reloader};
use crate::stage::cache::{Cache, Freshness, TtlLimits};
use crate::stage::guard::Acl;
use crate::stage::shaper::{Shaper, ShaperSettings};
use crate::stage::shortcut::SearchPath;
use crate::stage::upstream::{UpstreamMetrics, UpstreamSettings, Upstreams};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {proto} listener {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Everything bound and built, nothing running yet.
pub struct App {
    config: Config,
    pipeline: Arc<Pipeline>,
    udp: Vec<Vec<std::net::UdpSocket>>,
    tcp: Vec<std::net::TcpListener>,
    dns_addrs: Vec<SocketAddr>,
    admin: Admin,
    readiness: Readiness,
    /// The index writer, handed to the cluster source's task at spawn.
    cluster: Option<IndexWriter>,
    /// A predecessor serves our addresses: take no traffic until ready.
    hold: bool,
    /// Where reloads read the config (`reload_from`); unset: the config never changes.
    source: Option<ConfigSource>,
}

impl App {
    /// Binds every listener (UDP and TCP on the same port; port 0 picks one)
    /// and the admin server; resolves the upstreams.
    pub fn build(config: Config) -> Result<App, BuildError> {
        config.validate()?;
        let servers = config.upstream_servers()?;
        let metrics = Metrics::new(prometheus::Registry::new())?;
        let readiness = Readiness::new();
        let probe_file = config.node.probe_file.as_deref();
        let admin = Admin::start(config.admin, metrics.registry.clone(), readiness.clone(), probe_file)?;

        let workers = config.worker_count();
        let hold = crate::node::handover::predecessor_serving(&config.listen);
        let mut udp_sockets = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut dns_addrs = Vec::new();
        for &addr in &config.listen {
            let (sockets, listener) = match hold {
                false => bind_pair(addr, workers)?,
                // A predecessor serves this port: UDP binds once ready, TCP is steered to it until then.
                true => hold_pair(addr, workers)?,
            };
            let bound = match hold {
                true => addr,
                false => sockets[0].local_addr().map_err(|source| BuildError::Bind {
                    proto: "udp",
                    addr,
                    source,
                })?,
            };
            dns_addrs.push(bound);
            udp_sockets.push(sockets);
            tcp_listeners.push(listener);
        }

        let c = &config.cache;
        let protection = &metrics.protection;
        let (refresh_tx, refreshes) = match c.prefetch {
            true => {
                let (tx, rx) = tokio::sync::mpsc::channel(crate::pipeline::REFRESH_QUEUE);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let cache = Cache::with_freshness(
            c.max_bytes,
            ttl_limits(c),
            Freshness {
                stale_ttl: c.stale_ttl,
                stale_answer_ttl: c.stale_answer_ttl,
                refresh: refresh_tx,
                stale_hits: protection.stale_hit.clone(),
                refresh_dropped: protection.prefetch_dropped.clone(),
            },
        );
        let shaper = Shaper::new(shaper_settings(&config.upstream), protection.clone());
        let index = match config.cluster.source {
            SourceKind::None => None,
            _ => Some(new_index()),
        };
        let live = compose_live(&config, servers, &metrics, index.as_ref().map(|(_, h)| h), None);
        let cluster = index.map(|(writer, _)| writer);
        let stages = Stages {
            live,
            cache,
            shaper,
            refreshes,
        };
        let pipeline = Arc::new(Pipeline::new(
            stages,
            metrics,
            config.edns_udp_size,
            config.max_inflight,
        ));
        Ok(App {
            config,
            pipeline,
            udp: udp_sockets,
            tcp: tcp_listeners,
            dns_addrs,
            admin,
            readiness,
            cluster,
            hold,
            source: None,
        })
    }

    /// Reloads (SIGHUP, `Running::reload`, a changed file) read `source`:
    /// the file and command-line overrides `config` was built from.
    pub fn reload_from(mut self, source: ConfigSource) -> App {
        self.source = Some(source);
        self
    }

    /// The bound DNS addresses, one per `listen` entry (UDP and TCP share it).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Starts the UDP worker threads and the TCP accept loops on the current
    /// tokio runtime, then reports ready.
    pub fn spawn(self) -> Result<Running, std::io::Error> {
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut threads = Vec::new();
        let mut held_udp = Vec::new();
        let mut udp_groups = Vec::new();
        // Held back (node::handover): start reading once ready, so nothing is answered before the index is.
        let gate = self.hold.then(|| self.readiness.clone());
        for (sockets, addr) in self.udp.into_iter().zip(&self.dns_addrs) {
            let own = sockets.len() as u32;
            for (i, socket) in sockets.into_iter().enumerate() {
                let socket = Arc::new(socket);
                held_udp.push((socket.clone(), *addr));
                udp_groups.push((socket.clone(), own));
                let worker = udp::Worker::new(socket, self.pipeline.clone(), runtime.clone(), stop.clone());
                let (gate, stopped) = (gate.clone(), stop.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("nodens-udp-{addr}-{i}"))
                        .spawn(move || {
                            while gate.as_ref().is_some_and(|r| !r.is_ready()) && !stopped.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            worker.run()
                        })?,
                );
            }
        }
        let limits = tcp::Limits {
            max_connections: self.config.tcp.max_connections,
            idle_timeout: self.config.tcp.idle_timeout,
            max_message_size: self.config.tcp.max_message_size,
        };
        let mut tcp_tasks = Vec::new();
        // Rolling update: the predecessor keeps answering until we are ready (node::handover).
        let held = match self.hold {
            true => crate::node::handover::Held::new(held_udp, &self.tcp),
            false => Default::default(),
        };
        for listener in self.tcp {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let serve = tcp::serve(listener, self.pipeline.clone(), limits, shutdown_rx.clone());
            let (gate, mut shutdown) = (gate.clone(), shutdown_rx.clone());
            tcp_tasks.push(tokio::spawn(async move {
                if let Some(ready) = gate {
                    // Held back: what got queued in the moment before the hold is answered once ready.
                    while !ready.is_ready() && !*shutdown.borrow_and_update() {
                        let _ = tokio::time::timeout(Duration::from_millis(5), shutdown.changed()).await;
                    }
                }
                serve.await
            }));
        }
        let gauges = tokio::spawn(publish_cache_gauges(self.pipeline.clone(), shutdown_rx.clone()));
        let source = self.source.unwrap_or_else(|| ConfigSource::fixed(self.config.clone()));
        let reloader = Arc::new(Reloader::new(source, self.pipeline.clone(), self.config.clone()));
        let config_watch = tokio::spawn(reloader.clone().watch(shutdown_rx.clone()));
        self.pipeline.start_background();
        tokio::spawn(self.pipeline.clone().run_refreshes(shutdown_rx.clone()));
        let mut source = None;
        let mut live = None;
        match (self.cluster, self.pipeline.index()) {
            (Some(writer), Some(index)) => {
                let metrics = self.pipeline.metrics().cluster.clone();
                source = Some(tokio::spawn(run_source(
                    self.config.cluster.clone(),
                    writer,
                    metrics,
                    shutdown_rx,
                )));
                // Ready once the listeners are bound and the index has its first complete state.
                let (index, readiness) = (index.clone(), self.readiness.clone());
                live = Some(tokio::spawn(async move {
                    index.wait_synced().await;
                    held.release();
                    readiness.set_ready(true);
                    tracing::info!("cluster index synced; ready");
                }));
            }
            _ => {
                held.release();
                self.readiness.set_ready(true);
            }
        }
        tracing::info!(listen = ?self.dns_addrs, admin = %self.admin.local_addr(), "nodens serving");
        Ok(Running {
            pipeline: self.pipeline,
            stop,
            shutdown_tx,
            threads,
            tcp_tasks,
            gauges,
            source,
            live,
            udp_groups,
            admin: self.admin,
            readiness: self.readiness,
            reloader,
            config_watch,
            dns_addrs: self.dns_addrs,
        })
    }
}

/// Binds the UDP sockets and the TCP listener of one listen address on the
/// same port. With port 0 a port free for both is chosen first
/// (`exclusive_port`), and a few ports are tried before giving up.
fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), BuildError> {
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let addr = match addr.port() {
            0 => exclusive_port(addr).map_err(|source| BuildError::Bind {
                proto: "udp",
                addr,
                source,
            })?,
            _ => addr,
        };
        let sockets = udp::bind(addr, workers).map_err(|source| BuildError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let bound = sockets[0].local_addr().map_err(|source| BuildError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        match tcp::bind(bound) {
            Ok(listener) => return Ok((sockets, listener)),
            Err(source) => {
                last = Some(BuildError::Bind {
                    proto: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A port on `addr`'s IP that no socket holds, UDP or TCP. Letting the
/// kernel pick one for a SO_REUSEPORT socket is not enough: it hands out a
/// port another reuseport group of the same user already has (412 of 5,000
/// such binds on this machine), and that group's process would then get
/// half of our datagrams. A bind without SO_REUSEPORT gets a port nobody
/// holds; it is released just before the listeners take it.
fn exclusive_port(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let mut last = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(addr)?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(_) => return Ok(SocketAddr::new(addr.ip(), port)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// `bind_pair` beside a serving predecessor: the UDP sockets unbound (they
/// bind once ready), the TCP listener bound and its group steered to the
/// predecessor's listener.
fn hold_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), BuildError> {
    let sockets = udp::unbound(addr, workers).map_err(|source| BuildError::Bind {
        proto: "udp",
        addr,
        source,
    })?;
    let listener = tcp::bind(addr).map_err(|source| BuildError::Bind {
        proto: "tcp",
        addr,
        source,
    })?;
    if let Err(e) = crate::node::handover::steer_to(&listener, crate::node::handover::OLDER) {
        tracing::warn!(error = %e, "tcp listener cannot wait for readiness; serving at once");
    }
    Ok((sockets, listener))
}

/// The cache's TTL bounds (`cache.*`).
pub fn ttl_limits(c: &CacheConfig) -> TtlLimits {
    TtlLimits {
        min_ttl: c.min_ttl,
        max_ttl: c.max_ttl,
        min_negative_ttl: c.min_negative_ttl,
        max_negative_ttl: c.max_negative_ttl,
    }
}

/// The shaper's keys (`[upstream]`, DESIGN §7).
pub fn shaper_settings(u: &UpstreamConfig) -> ShaperSettings {
    ShaperSettings {
        qps: u.qps,
        burst: u.burst,
        max_inflight: u.max_inflight,
        per_client_qps: u.per_client_qps,
        per_client_burst: u.per_client_burst,
        queue_wait: u.queue_wait,
        queue_size: u.queue_size,
    }
}

/// The stages a reload replaces, from `config` (validated) and the resolved
/// upstream `servers`. `previous` (on reload) lends its upstream clients
/// when their servers and timeout are unchanged, so their health and
/// counters carry over; the cluster zone always reads `index`.
pub(crate) fn compose_live(
    config: &Config,
    servers: Vec<SocketAddr>,
    metrics: &Metrics,
    index: Option<&IndexHandle>,
    previous: Option<&Live>,
) -> Live {
    let timeout = config.upstream.timeout;
    let upstreams = |servers: Vec<SocketAddr>, before: Option<&Arc<Upstreams>>| match before {
        Some(u) if u.servers() == servers.as_slice() && u.timeout() == timeout => u.clone(),
        _ => Arc::new(Upstreams::new(
            UpstreamSettings {
                servers,
                timeout,
                edns_udp_size: config.edns_udp_size,
            },
            UpstreamMetrics {
                requests: metrics.upstream_requests.clone(),
            },
        )),
    };
    let k = &config.cluster;
    let authority = index.map(|index| {
        let settings = ZoneSettings {
            domain: k.domain.clone(),
            service_ttl: k.service_ttl,
            endpoint_ttl: k.endpoint_ttl,
            negative_ttl: k.negative_ttl,
            pods: k.pods == PodsMode::Insecure,
            reverse_cidrs: k.reverse_cidrs.clone(),
        };
        Authority::new(settings, index.clone())
    });
    let cluster_fallback = (!k.cluster_upstream.is_empty()).then(|| {
        let before = previous.and_then(|p| p.cluster_fallback.as_ref());
        upstreams(k.cluster_upstream.clone(), before)
    });
    let search = SearchPath::new(
        config.search.shortcut,
        config.search.ndots,
        &config.cluster.domain,
        &config.search_domains(),
    );
    Live {
        acl: Acl::new(config.allow.clone()),
        authority,
        upstreams: upstreams(servers, previous.map(|p| &p.upstreams)),
        cluster_fallback,
        search: Some(search),
    }
}

/// Runs the configured cluster source until shutdown.
async fn run_source(
    config: ClusterConfig,
    writer: IndexWriter,
    metrics: ClusterMetrics,
    shutdown: watch::Receiver<bool>,
) {
    let mut writer = writer;
    match config.source {
        SourceKind::None => {}
        SourceKind::Demo => {
            tracing::warn!("serving the demo cluster built into the binary; set cluster.source for a real cluster");
            match static_file::parse(Path::new("<built-in demo cluster>"), DEMO_CLUSTER, &metrics) {
                Ok(state) => static_file::publish(&mut writer, &metrics, state),
                Err(e) => tracing::error!(error = %e, "the built-in demo cluster does not load"),
            }
        }
        SourceKind::Static => {
            let path = config.static_file.unwrap_or_default();
            static_file::run(path, writer, metrics, config.static_poll_interval, shutdown).await;
        }
        SourceKind::Hub => hub::run(hub::HubSettings::from_config(&config), writer, metrics, shutdown).await,
        SourceKind::Kubernetes => match kubernetes::client(config.kubeconfig.as_deref()).await {
            Ok(client) => kubernetes::run(client, writer, metrics, shutdown).await,
            Err(e) => tracing::error!(error = %e, "cluster source kubernetes cannot start; cluster names get SERVFAIL"),
        },
    }
}

/// The demo cluster (`cluster.source = "demo"`), built in so a fresh machine answers cluster names.
const DEMO_CLUSTER: &[u8] = include_bytes!("../config/example-cluster.yaml");

/// Keeps the cache gauges current; moka counts lazily, so read them on a timer.
async fn publish_cache_gauges(pipeline: Arc<Pipeline>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::front::tcp::stopped(&mut shutdown) => return,
        }
        let cache = pipeline.cache();
        cache.run_pending_tasks();
        let m = pipeline.metrics();
        m.cache_entries.set(cache.entry_count() as i64);
        m.cache_bytes.set(cache.weighted_size() as i64);
    }
}

/// A serving nodens; `shutdown` drains it.
pub struct Running {
    pipeline: Arc<Pipeline>,
    stop: Arc<AtomicBool>,
    shutdown_tx: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    tcp_tasks: Vec<tokio::task::JoinHandle<()>>,
    gauges: tokio::task::JoinHandle<()>,
    source: Option<tokio::task::JoinHandle<()>>,
    /// Waits for the first sync to report ready (and holds sockets back until then).
    live: Option<tokio::task::JoinHandle<()>>,
    /// Every UDP socket and how many this agent has on its address: the
    /// group is steered away through them on drain, and they stay open until
    /// every worker has drained: a closed member would let the kernel move
    /// another into its index and break the steering (node::handover).
    udp_groups: Vec<(Arc<std::net::UdpSocket>, u32)>,
    admin: Admin,
    readiness: Readiness,
    reloader: Arc<Reloader>,
    config_watch: tokio::task::JoinHandle<()>,
    dns_addrs: Vec<SocketAddr>,
}

impl Running {
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// This process's own probe listener (`node.probe_file` set).
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.admin.probe_addr()
    }

    /// Reads the config again and applies what can change while serving
    /// (SIGHUP). Blocking file I/O: call from `spawn_blocking` on a runtime.
    pub fn reload(&self) -> Reload {
        self.reloader.reload()
    }

    /// The config in effect: the start-up one with the live keys of every applied reload.
    pub fn running_config(&self) -> Config {
        self.reloader.running()
    }

    /// The reloader, for a signal handler that outlives a borrow of `self`.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Stops reading new queries, lets in-flight ones finish within the
    /// grace period, then stops the admin server. Returns false if the grace
    /// period ran out with queries still in flight.
    pub async fn shutdown(self) -> bool {
        if let Some(live) = &self.live {
            live.abort();
        }
        self.readiness.set_ready(false);
        // In a DaemonSet the next agent is waiting for the shared admin port.
        let released = self
            .admin
            .release_shared()
            .map(|s| tokio::task::spawn_blocking(move || s.shutdown()));
        // New datagrams go to the next agent, if there is one; ours are answered first (node::handover).
        for (socket, own) in &self.udp_groups {
            if let Err(e) = crate::node::handover::steer_past(&**socket, *own) {
                tracing::warn!(error = %e, "udp group cannot be steered to the next agent");
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        self.config_watch.abort();
        let grace = self.reloader.running().shutdown_grace;
        let threads = self.threads;
        // The UDP workers notice `stop` within their receive timeout, leave
        // their SO_REUSEPORT groups and answer what is queued to them first.
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())));
        let drained = async {
            let _ = joined.await;
            for t in self.tcp_tasks {
                let _ = t.await;
            }
            self.pipeline.drained().await;
        };
        let clean = tokio::time::timeout(grace, drained).await.is_ok();
        if !clean {
            tracing::warn!(?grace, "shutdown grace period over with queries in flight");
        }
        self.gauges.abort();
        if let Some(source) = self.source {
            source.abort();
        }
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || admin.shutdown()).await;
        if let Some(released) = released {
            let _ = released.await;
        }
        tracing::info!("nodens stopped");
        clean
    }
}
