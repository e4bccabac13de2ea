//! `nodens hub` (DESIGN §5): the one process that watches the API server,
//! for every node agent. It runs a cluster source (the direct `kubernetes`
//! watch in production; a static file or the demo cluster for tests and
//! demos) into an ordinary `IndexWriter`, follows the writer's change feed
//! into a versioned `Feed`, and streams it to agents: a snapshot, then
//! ordered deltas. API-server watches stay at one per hub replica, whatever
//! the number of nodes; agents need no Kubernetes API rights at all.
//!
//! - `feed`: the versioned index: the objects, the bounded delta history and
//!   the cached snapshot, all encoded with `cluster::codec`.
//! - `server`: the streaming endpoint (HTTP/2 or HTTP/1.1), auth, limits.
//! - `tls`: the optional TLS for that endpoint (`hub.tls_cert`, `hub.tls_key`).
//!
//! Must not: depend on the agent's `hub` source (both depend on the index
//! and its codec only), or write to the API server.
//!
//! Transport: a long-lived HTTP/2 stream per agent (h2c; HTTP/1.1 chunked is
//! served too, for curl). HTTP/2 because its per-stream flow control is the
//! per-subscriber bound: hyper pulls a stream's next chunk only when the
//! agent's window has room, so a stalled agent stops costing the hub at a
//! window's worth of bytes (the agent sets it: 1 MiB), whatever its
//! socket buffers; HTTP/1.1 has no such bound short of the kernel's
//! buffers. It is also what DESIGN §5 and proxies in front of a Service
//! expect. gRPC would add a schema compiler and a framework for one
//! read-only stream. The stream is the index's own codec frames.
//!
//! TLS (optional, off by default): with `hub.tls_cert` and `hub.tls_key` the
//! same endpoint is served over TLS only (ALPN h2, and http/1.1), so an agent
//! holding the CA (`cluster.hub_ca`) can tell the real hub from anything else
//! answering on its address; that stream decides every cluster answer on the
//! node. The bearer token still authenticates the agent to the hub.

pub mod feed;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminError, AdminServer, Readiness};
use crate::cluster::index::{new_index, IndexHandle};
use crate::cluster::source::kubernetes::{self, KubeSourceError};
use crate::cluster::source::static_file;
use crate::config::{Config, ConfigError, SourceKind};
use crate::metrics::{ClusterMetrics, HubMetrics};
use feed::{Feed, FeedSettings};
use server::ServerSettings;

/// Deltas sent to a subscriber that is behind go in chunks of about this
/// size; also hyper's per-stream send buffer.
const BATCH_BYTES: usize = 256 << 10;

/// The demo cluster (`hub.source = "demo"`), as `nodens serve` has it.
const DEMO_CLUSTER: &[u8] = include_bytes!("../../config/example-cluster.yaml");

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Boxed: the kube error is large and rare.
    #[error(transparent)]
    Kube(#[from] Box<KubeSourceError>),
    #[error("binding the hub listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// Where the hub's index comes from.
pub enum HubSource {
    /// The direct watch, with this client.
    Kubernetes(kube::Client),
    /// A `kubectl get svc,endpointslices -A -o yaml` dump, polled.
    Static(PathBuf),
    /// The demo cluster built into the binary.
    Demo,
}

impl std::fmt::Debug for HubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubSource::Kubernetes(_) => f.write_str("Kubernetes"),
            HubSource::Static(p) => write!(f, "Static({})", p.display()),
            HubSource::Demo => f.write_str("Demo"),
        }
    }
}

impl HubSource {
    /// The source `hub.source` names, with its `[cluster]` keys; builds the
    /// Kubernetes client (kubeconfig, else in-cluster, else ~/.kube/config).
    pub async fn from_config(config: &Config) -> Result<HubSource, HubError> {
        config.validate_hub()?;
        Ok(match config.hub.source {
            SourceKind::Static => HubSource::Static(config.cluster.static_file.clone().unwrap_or_default()),
            SourceKind::Demo => HubSource::Demo,
            _ => HubSource::Kubernetes(
                kubernetes::client(config.cluster.kubeconfig.as_deref())
                    .await
                    .map_err(Box::new)?,
            ),
        })
    }
}

/// Binds the agents' listener with a deep accept queue: after a hub
/// restart the whole fleet reconnects at once, and the default backlog (128)
/// would drop their SYNs into seconds of retransmission.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The accept queue (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    listen: SocketAddr,
    admin: AdminServer,
    readiness: Readiness,
    feed: Arc<Feed>,
    index: IndexHandle,
    metrics: HubMetrics,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    source: JoinHandle<()>,
}

impl Hub {
    /// Binds the listener and the admin server, and starts the source and the
    /// server on the current tokio runtime. Ready (`/readyz`, and streams
    /// served) once the source's first complete state is in.
    pub fn start(config: &Config, source: HubSource) -> Result<Hub, HubError> {
        config.validate_hub()?;
        let h = &config.hub;
        // Before binding anything: a bad certificate or key stops the hub at start.
        let tls = match (&h.tls_cert, &h.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let registry = prometheus::Registry::new();
        let cluster_metrics = ClusterMetrics::new(&registry)?;
        let metrics = HubMetrics::new(&registry)?;
        let listener = bind(h.listen)
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| HubError::Bind { addr: h.listen, source })?;
        let listen = listener
            .local_addr()
            .map_err(|source| HubError::Bind { addr: h.listen, source })?;
        let readiness = Readiness::new();
        let admin = AdminServer::spawn(h.admin, registry, readiness.clone())?;

        let (mut writer, index) = new_index();
        let settings = FeedSettings {
            history: h.history,
            history_bytes: h.history_bytes,
            ..FeedSettings::default()
        };
        let feed = Feed::new(settings, metrics.clone());
        feed.attach(&mut writer);
        let (shutdown, stopped) = watch::channel(false);

        let poll = config.cluster.static_poll_interval;
        let (m, stop) = (cluster_metrics, stopped.clone());
        let source = tokio::spawn(async move {
            match source {
                HubSource::Kubernetes(client) => kubernetes::run(client, writer, m, stop).await,
                HubSource::Static(path) => static_file::run(path, writer, m, poll, stop).await,
                HubSource::Demo => match static_file::parse(Path::new("<built-in demo cluster>"), DEMO_CLUSTER, &m) {
                    Ok(state) => static_file::publish(&mut writer, &m, state),
                    Err(e) => tracing::error!(error = %e, "the built-in demo cluster does not load"),
                },
            }
        });
        let (ready_index, ready) = (index.clone(), readiness.clone());
        tokio::spawn(async move {
            ready_index.wait_synced().await;
            ready.set_ready(true);
            tracing::info!("hub index synced; ready");
        });
        let settings = ServerSettings {
            token: (!h.token.is_empty()).then(|| h.token.clone()),
            heartbeat: h.heartbeat,
            max_subscribers: h.max_subscribers,
            batch_bytes: BATCH_BYTES,
            tls,
        };
        let server = tokio::spawn(server::serve(
            listener,
            feed.clone(),
            index.clone(),
            settings,
            metrics.clone(),
            stopped,
        ));
        let tls = h.tls_cert.is_some();
        tracing::info!(%listen, admin = %admin.local_addr(), origin = feed.origin(), tls, "nodens hub started");
        Ok(Hub {
            listen,
            admin,
            readiness,
            feed,
            index,
            metrics,
            shutdown,
            server,
            source,
        })
    }

    /// Where agents subscribe.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The versioned index served.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The hub's own index (what agents converge to).
    pub fn index(&self) -> &IndexHandle {
        &self.index
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Stops serving (every stream ends), stops the source and the admin server.
    pub async fn shutdown(self) {
        self.readiness.set_ready(false);
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        self.source.abort();
        let _ = self.source.await;
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || admin.shutdown()).await;
        tracing::info!("nodens hub stopped");
    }
}
