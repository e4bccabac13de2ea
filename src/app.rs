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

use crate::admin::{AdminError, AdminServer, Readiness};
use crate::cluster::authority::{Authority, ZoneSettings};
use crate::cluster::index::{new_index, IndexWriter};
use crate::config::{ClusterConfig, Config, ConfigError, PodsMode, SourceKind};
use crate::cluster::source::{kubernetes, static_file};
use crate::metrics::ClusterMetrics;
use crate::front::{tcp, udp};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Stages};
use crate::stage::shortcut::SearchPath;
use crate::stage::cache::{Cache, TtlLimits};
use crate::stage::guard::Acl;
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
    admin: AdminServer,
    readiness: Readiness,
    /// The index writer, handed to the cluster source's task at spawn.
    cluster: Option<IndexWriter>,
}

impl App {
    /// Binds every listener (UDP and TCP on the same port; port 0 picks one)
    /// and the admin server; resolves the upstreams.
    pub fn build(config: Config) -> Result<App, BuildError> {
        config.validate()?;
        let servers = config.upstream_servers()?;
        let metrics = Metrics::new(prometheus::Registry::new())?;
        let readiness = Readiness::new();
        let admin = AdminServer::spawn(config.admin, metrics.registry.clone(), readiness.clone())?;

        let workers = config.worker_count();
        let mut udp_sockets = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut dns_addrs = Vec::new();
        for &addr in &config.listen {
            let (sockets, listener) = bind_pair(addr, workers)?;
            let bound = sockets[0].local_addr().map_err(|source| BuildError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            dns_addrs.push(bound);
            udp_sockets.push(sockets);
            tcp_listeners.push(listener);
        }

        let c = &config.cache;
        let cache = Cache::new(
            c.max_bytes,
            TtlLimits {
                min_ttl: c.min_ttl,
                max_ttl: c.max_ttl,
                min_negative_ttl: c.min_negative_ttl,
                max_negative_ttl: c.max_negative_ttl,
            },
        );
        let upstreams = Upstreams::new(
            UpstreamSettings {
                servers,
                timeout: config.upstream.timeout,
                edns_udp_size: config.edns_udp_size,
            },
            UpstreamMetrics {
                requests: metrics.upstream_requests.clone(),
            },
        );
        let k = &config.cluster;
        let (cluster, authority) = if k.source == SourceKind::None {
            (None, None)
        } else {
            let (writer, handle) = new_index();
            let settings = ZoneSettings {
                domain: k.domain.clone(),
                service_ttl: k.service_ttl,
                endpoint_ttl: k.endpoint_ttl,
                negative_ttl: k.negative_ttl,
                pods: k.pods == PodsMode::Insecure,
                reverse_cidrs: k.reverse_cidrs.clone(),
            };
            (Some(writer), Some(Authority::new(settings, handle)))
        };
        let cluster_fallback = (!k.cluster_upstream.is_empty()).then(|| {
            Upstreams::new(
                UpstreamSettings {
                    servers: k.cluster_upstream.clone(),
                    timeout: config.upstream.timeout,
                    edns_udp_size: config.edns_udp_size,
                },
                UpstreamMetrics { requests: metrics.upstream_requests.clone() },
            )
        });
        let search = SearchPath::new(
            config.search.shortcut,
            config.search.ndots,
            &config.cluster.domain,
            &config.search_domains(),
        );
        let stages = Stages {
            acl: Acl::new(config.allow.clone()),
            authority,
            cache,
            upstreams,
            cluster_fallback,
            search: Some(search),
        };
        let pipeline = Arc::new(Pipeline::new(stages, metrics, config.edns_udp_size, config.max_inflight));
        Ok(App { config, pipeline, udp: udp_sockets, tcp: tcp_listeners, dns_addrs, admin, readiness, cluster })
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
        for (sockets, addr) in self.udp.into_iter().zip(&self.dns_addrs) {
            for (i, socket) in sockets.into_iter().enumerate() {
                let worker = udp::Worker::new(Arc::new(socket), self.pipeline.clone(), runtime.clone(), stop.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("nodens-udp-{addr}-{i}"))
                        .spawn(move || worker.run())?,
                );
            }
        }
        let limits = tcp::Limits {
            max_connections: self.config.tcp.max_connections,
            idle_timeout: self.config.tcp.idle_timeout,
            max_message_size: self.config.tcp.max_message_size,
        };
        let mut tcp_tasks = Vec::new();
        for listener in self.tcp {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tcp_tasks.push(tokio::spawn(tcp::serve(
                listener,
                self.pipeline.clone(),
                limits,
                shutdown_rx.clone(),
            )));
        }
        let gauges = tokio::spawn(publish_cache_gauges(self.pipeline.clone(), shutdown_rx.clone()));
        self.pipeline.start_background();
        let mut source = None;
        match (self.cluster, self.pipeline.authority()) {
            (Some(writer), Some(authority)) => {
                let metrics = self.pipeline.metrics().cluster.clone();
                source = Some(tokio::spawn(run_source(self.config.cluster.clone(), writer, metrics, shutdown_rx)));
                // Ready once the listeners are bound and the index has its first complete state.
                let (index, readiness) = (authority.index().clone(), self.readiness.clone());
                tokio::spawn(async move {
                    index.wait_synced().await;
                    readiness.set_ready(true);
                    tracing::info!("cluster index synced; ready");
                });
            }
            _ => self.readiness.set_ready(true),
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
            admin: self.admin,
            readiness: self.readiness,
            grace: self.config.shutdown_grace,
            dns_addrs: self.dns_addrs,
        })
    }
}

/// Binds the UDP sockets and the TCP listener of one listen address on the
/// same port. With port 0 the kernel picks the UDP port, which may be taken
/// for TCP: try a few ports before giving up.
fn bind_pair(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener), BuildError> {
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
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
    admin: AdminServer,
    readiness: Readiness,
    grace: Duration,
    dns_addrs: Vec<SocketAddr>,
}

impl Running {
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Stops reading new queries, lets in-flight ones finish within the
    /// grace period, then stops the admin server. Returns false if the grace
    /// period ran out with queries still in flight.
    pub async fn shutdown(self) -> bool {
        self.readiness.set_ready(false);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        let threads = self.threads;
        // The UDP workers notice `stop` within their receive timeout.
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())));
        let drained = async {
            let _ = joined.await;
            for t in self.tcp_tasks {
                let _ = t.await;
            }
            self.pipeline.drained().await;
        };
        let clean = tokio::time::timeout(self.grace, drained).await.is_ok();
        if !clean {
            tracing::warn!(grace = ?self.grace, "shutdown grace period over with queries in flight");
        }
        self.gauges.abort();
        if let Some(source) = self.source {
            source.abort();
        }
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || admin.shutdown()).await;
        tracing::info!("nodens stopped");
        clean
    }
}
