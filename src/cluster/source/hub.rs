//! The `hub` source (DESIGN §5): the node agent's subscription to
//! `nodens hub`, which holds the only API-server watch.
//!
//! Owns: the `IndexWriter` (for its lifetime), one subscription at a time
//! to one of the configured hub addresses, the hub position (origin and
//! version) of what the index holds, the reconnect backoff, and the
//! optional direct-watch fallback. Must not: depend on the hub server (both
//! speak `cluster::codec`), need any Kubernetes API right (except with the
//! fallback on), or drop the index when no hub answers.
//!
//! Behaviour:
//! - **Subscribe**: HTTP/2 (h2c) `GET /v1/index?origin=O&version=V` to an
//!   address picked at random at start (agents spread over hub replicas),
//!   `Authorization: Bearer` if `hub_token` is set. With `hub_ca`, over TLS
//!   instead: the hub's certificate must chain to that bundle (and to no
//!   other root) and name `hub_server_name`; one that does not is a failed
//!   connection like any other. The bundle is read on every attempt, so a
//!   rotated CA is picked up at the next reconnect. A snapshot is applied
//!   with `replace_all` (one publish: no name disappears in between) and
//!   marks the index synced; a delta with `apply_batch`.
//! - **Resume**: the position goes with every reconnect; the hub answers
//!   with only the deltas missed, or a snapshot when its history no longer
//!   has them (or it is another hub, or a restarted one: another origin).
//! - **Stale, not empty**: with no hub reachable the index keeps serving
//!   what it has; `nodens_hub_source_staleness_seconds` is the time since the
//!   last frame (the hub sends heartbeats, so a connected agent stays under
//!   `hub.heartbeat`).
//! - **Reconnect**: a stream that ends, errs, or is silent for `hub_timeout`
//!   is dropped; the next address is tried after a jittered exponential
//!   backoff (250 ms doubling to 30 s, each wait 50–100 % of its step),
//!   reset by every frame received.
//! - **Fallback** (off by default): with no hub frame for
//!   `hub_fallback_after` plus a random share of `hub_fallback_jitter`
//!   (drawn per agent, so a fleet spreads its lists over the jitter window
//!   rather than hitting the API server at once), the agent runs the
//!   `kubernetes` source on a shadow index and copies its changes into its
//!   own. Hub attempts continue meanwhile; the first hub snapshot stops the
//!   direct watch and replaces its state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::codec::{CodecError, Frame, FrameReader, Objects, CONTENT_TYPE, INDEX_PATH};
use crate::cluster::index::{new_index, IndexHandle, IndexWriter};
use crate::cluster::model::Change;
use crate::cluster::source::kubernetes;
use crate::config::ClusterConfig;
use crate::metrics::ClusterMetrics;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Connecting and getting the response head, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The agent's HTTP/2 receive window: a snapshot streams in a few round trips.
const WINDOW: u32 = 1 << 20;
/// How often the staleness gauge and the fallback timer are looked at.
const TICK: Duration = Duration::from_millis(250);

/// The source's settings (from `[cluster]`).
#[derive(Clone, Debug)]
pub struct HubSettings {
    pub addrs: Vec<SocketAddr>,
    pub token: Option<String>,
    /// A stream silent this long is dropped.
    pub timeout: Duration,
    pub fallback: Option<FallbackSettings>,
    /// `None`: cleartext (h2c).
    pub tls: Option<HubTls>,
}

/// TLS to the hubs (`cluster.hub_ca`, `cluster.hub_server_name`).
#[derive(Clone, Debug)]
pub struct HubTls {
    /// The PEM CA bundle: the only roots a hub certificate may chain to.
    pub ca: PathBuf,
    /// The name verified (and sent as SNI): addresses are IP:port.
    pub server_name: String,
}

/// A TLS client ready to connect (`HubTls::connector`).
#[derive(Clone)]
pub struct HubConnector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for HubConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HubConnector({:?})", self.name)
    }
}

impl HubTls {
    /// Reads the CA bundle and builds the client: ring (the provider kube's
    /// rustls uses), TLS 1.2/1.3, ALPN h2, no client certificate.
    pub fn connector(&self) -> Result<HubConnector, SubscribeError> {
        let fail = |reason: String| SubscribeError::Tls {
            key: "cluster.hub_ca",
            path: self.ca.clone(),
            reason,
        };
        let pem = std::fs::read(&self.ca).map_err(|e| fail(format!("reading it: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not a PEM bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| fail(format!("a bad CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(fail("holds no PEM certificate".into()));
        }
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| SubscribeError::Tls {
            key: "cluster.hub_server_name",
            path: PathBuf::from(&self.server_name),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(HubConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// The direct-watch fallback.
#[derive(Clone, Debug)]
pub struct FallbackSettings {
    pub after: Duration,
    pub jitter: Duration,
    pub kubeconfig: Option<PathBuf>,
}

impl HubSettings {
    pub fn from_config(c: &ClusterConfig) -> HubSettings {
        HubSettings {
            addrs: c.hub.clone(),
            token: (!c.hub_token.is_empty()).then(|| c.hub_token.clone()),
            timeout: c.hub_timeout,
            fallback: c.hub_fallback.then(|| FallbackSettings {
                after: c.hub_fallback_after,
                jitter: c.hub_fallback_jitter,
                kubeconfig: c.kubeconfig.clone(),
            }),
            tls: c.hub_ca.clone().map(|ca| HubTls {
                ca,
                server_name: c.hub_server_name.clone(),
            }),
        }
    }
}

/// Why a subscription ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("connecting to hub {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    /// The TLS client could not be set up (the CA bundle or the name).
    #[error("config key `{key}` = {path:?}: {reason}")]
    Tls {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The handshake failed: among others, a certificate that does not verify.
    #[error("TLS with hub {addr}: {source}")]
    Handshake { addr: SocketAddr, source: std::io::Error },
    #[error("hub {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("hub {addr}: {source}")]
    Http { addr: SocketAddr, source: hyper::Error },
    #[error("hub {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
        body: String,
    },
    #[error("hub {addr} sent a bad stream: {source}")]
    Codec { addr: SocketAddr, source: CodecError },
    #[error("hub {addr} ended the stream")]
    Ended { addr: SocketAddr },
    #[error("hub {addr} broke the protocol: {what}")]
    Protocol { addr: SocketAddr, what: &'static str },
}

/// One open stream from a hub, decoded frame by frame. The scale
/// simulation drives many of these without an index behind each.
#[derive(Debug)]
pub struct Subscription {
    addr: SocketAddr,
    body: Incoming,
    reader: FrameReader,
    connection: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Subscription {
    /// Connects (HTTP/2, prior knowledge) and asks for the index after
    /// `position` (origin, version), or from scratch.
    pub async fn open(
        addr: SocketAddr,
        token: Option<&str>,
        position: Option<(u64, u64)>,
    ) -> Result<Subscription, SubscribeError> {
        Subscription::open_with(addr, token, None, position).await
    }

    /// `open`, over TLS with `tls` (HTTP/2 negotiated by ALPN), or h2c without.
    pub async fn open_with(
        addr: SocketAddr,
        token: Option<&str>,
        tls: Option<&HubConnector>,
        position: Option<(u64, u64)>,
    ) -> Result<Subscription, SubscribeError> {
        let timeout = |_| SubscribeError::Timeout {
            addr,
            after: CONNECT_TIMEOUT,
        };
        let http = |source| SubscribeError::Http { addr, source };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(timeout)?
            .map_err(|source| SubscribeError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut h2 = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW);
        let (mut send, connection) = match tls {
            None => {
                let (send, conn) = h2.handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await.map_err(http)?;
                (send, tokio::spawn(drive(addr, conn)))
            }
            Some(tls) => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(tls.name.clone(), tcp))
                    .await
                    .map_err(timeout)?
                    .map_err(|source| SubscribeError::Handshake { addr, source })?;
                let (send, conn) = h2
                    .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .map_err(http)?;
                (send, tokio::spawn(drive(addr, conn)))
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let query = match position {
            Some((origin, version)) => format!("?origin={origin}&version={version}"),
            None => String::new(),
        };
        let mut req = Request::get(format!("{scheme}://{addr}{INDEX_PATH}{query}")).header(ACCEPT, CONTENT_TYPE);
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).map_err(|_| SubscribeError::Protocol {
            addr,
            what: "the request could not be built",
        })?;
        let rsp = tokio::time::timeout(CONNECT_TIMEOUT, send.send_request(req))
            .await
            .map_err(timeout)?
            .map_err(http)?;
        if rsp.status() != StatusCode::OK {
            let status = rsp.status();
            // The reason, for the log; a few hundred bytes at most.
            let body = tokio::time::timeout(Duration::from_secs(1), rsp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| {
                    String::from_utf8_lossy(&b.to_bytes()[..])
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            return Err(SubscribeError::Status {
                addr,
                status,
                body: body.trim().to_string(),
            });
        }
        Ok(Subscription {
            addr,
            body: rsp.into_body(),
            reader: FrameReader::default(),
            connection,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next frame and its encoded size.
    pub async fn next(&mut self) -> Result<(Frame, usize), SubscribeError> {
        let addr = self.addr;
        loop {
            if let Some(frame) = self
                .reader
                .next_frame()
                .map_err(|source| SubscribeError::Codec { addr, source })?
            {
                return Ok(frame);
            }
            match self.body.frame().await {
                None => return Err(SubscribeError::Ended { addr }),
                Some(Err(source)) => return Err(SubscribeError::Http { addr, source }),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.reader.feed(&data);
                    }
                }
            }
        }
    }
}

/// Runs an HTTP/2 client connection until it closes.
async fn drive<F, E>(addr: SocketAddr, connection: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(error) = connection.await {
        debug!(%addr, %error, "hub connection closed");
    }
}

/// What a session task reports to the source's loop (which owns the writer).
enum Event {
    Opened,
    Frame(Frame, usize),
    Closed(SubscribeError),
}

/// Runs one subscription, sending its frames to the loop, until it fails.
async fn session(
    id: u64,
    addr: SocketAddr,
    settings: HubSettings,
    position: Option<(u64, u64)>,
    events: mpsc::Sender<(u64, Event)>,
) {
    let tls = match settings.tls.as_ref().map(HubTls::connector).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            let _ = events.send((id, Event::Closed(e))).await;
            return;
        }
    };
    let opened = Subscription::open_with(addr, settings.token.as_deref(), tls.as_ref(), position).await;
    let mut sub = match opened {
        Ok(sub) => sub,
        Err(e) => {
            let _ = events.send((id, Event::Closed(e))).await;
            return;
        }
    };
    if events.send((id, Event::Opened)).await.is_err() {
        return;
    }
    loop {
        let event = match tokio::time::timeout(settings.timeout, sub.next()).await {
            Ok(Ok((frame, size))) => Event::Frame(frame, size),
            Ok(Err(e)) => Event::Closed(e),
            Err(_) => Event::Closed(SubscribeError::Timeout {
                addr,
                after: settings.timeout,
            }),
        };
        let closed = matches!(event, Event::Closed(_));
        if events.send((id, event)).await.is_err() || closed {
            return;
        }
    }
}

/// Jittered exponential backoff between subscription attempts.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let step = self.0;
        self.0 = (step * 2).min(BACKOFF_MAX);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// The direct watch standing in for the hub.
struct Direct {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    changes: mpsc::UnboundedReceiver<Vec<Change>>,
    shadow: IndexHandle,
    /// The shadow index's objects, to replace ours in one publish once it synced.
    objects: Objects,
    /// Our index holds the direct watch's state (and follows it).
    copied: bool,
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// The loop's state.
struct Agent {
    settings: HubSettings,
    writer: IndexWriter,
    metrics: ClusterMetrics,
    /// The hub origin and version the index holds, if it holds a hub's state.
    position: Option<(u64, u64)>,
    last_contact: Instant,
    direct: Option<Direct>,
    /// This agent's share of the fallback jitter.
    fallback_delay: Duration,
}

impl Agent {
    fn apply(&mut self, frame: Frame, size: usize) -> Result<(), &'static str> {
        let m = self.metrics.hub.clone();
        m.bytes.inc_by(size as u64);
        match frame {
            Frame::Snapshot(s) => {
                if self.direct.take().is_some() {
                    info!("a hub answered: direct watch stopped");
                    self.metrics.hub.fallback.set(0);
                    self.fallback_delay = draw_delay(&self.settings);
                }
                let (services, slices) = (s.services.len(), s.slices.len());
                self.writer.replace_all(s.services, s.slices);
                self.position = Some((s.origin, s.version));
                self.synced();
                m.frames.with_label_values(&["snapshot"]).inc();
                info!(
                    version = s.version,
                    services,
                    slices,
                    bytes = size,
                    "hub snapshot applied"
                );
            }
            Frame::Delta { version, changes } => {
                let Some((_, at)) = &mut self.position else {
                    return Err("a delta before any snapshot");
                };
                if version <= *at {
                    return Err("a delta out of order");
                }
                *at = version;
                self.writer.apply_batch(changes);
                self.metrics.published(&self.writer);
                m.frames.with_label_values(&["delta"]).inc();
            }
            Frame::Heartbeat { origin, version } => {
                match &mut self.position {
                    Some((o, at)) if *o == origin && version >= *at => *at = version,
                    _ => return Err("a heartbeat for another position"),
                }
                m.frames.with_label_values(&["heartbeat"]).inc();
            }
        }
        if let Some((_, v)) = self.position {
            m.version.set(v as i64);
        }
        self.last_contact = Instant::now();
        m.staleness.set(0.0);
        Ok(())
    }

    fn synced(&mut self) {
        self.metrics.published(&self.writer);
        self.metrics.synced();
        if !self.writer.handle().is_synced() {
            self.writer.mark_synced();
            info!(
                services = self.writer.service_count(),
                endpoints = self.writer.endpoint_count(),
                "cluster index synced"
            );
        }
    }

    /// Starts the direct watch once no hub was heard from for long enough.
    async fn maybe_fall_back(&mut self) {
        let Some(fb) = self.settings.fallback.clone() else {
            return;
        };
        if self.direct.is_some() || self.last_contact.elapsed() < fb.after + self.fallback_delay {
            return;
        }
        let client = match kubernetes::client(fb.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "direct-watch fallback cannot start; trying again later");
                self.fallback_delay += fb.after.max(Duration::from_secs(1));
                return;
            }
        };
        warn!(
            silent_for = ?self.last_contact.elapsed(),
            "no hub reachable: watching the API server directly until one answers"
        );
        let (mut shadow, handle) = new_index();
        let (tx, rx) = mpsc::unbounded_channel();
        // The direct watch's changes come here; a closed channel just means we stopped it.
        shadow.set_feed(Box::new(move |_, changes| {
            let _ = tx.send(changes.to_vec());
        }));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(kubernetes::run(client, shadow, self.metrics.clone(), stopped));
        self.direct = Some(Direct {
            stop,
            task,
            changes: rx,
            shadow: handle,
            objects: Objects::default(),
            copied: false,
        });
        // The index will no longer be the hub's state at that position.
        self.position = None;
        self.metrics.hub.fallback.set(1);
    }

    /// Folds the direct watch's changes into our index.
    fn direct_changes(&mut self, changes: Vec<Change>) {
        let Some(d) = &mut self.direct else { return };
        d.objects.apply(&changes);
        if d.copied {
            self.writer.apply_batch(changes);
            self.metrics.published(&self.writer);
        } else {
            self.copy_direct();
        }
    }

    /// Once the shadow index synced: its whole state into ours, one publish.
    fn copy_direct(&mut self) {
        let Some(d) = &mut self.direct else { return };
        if d.copied || !d.shadow.is_synced() {
            return;
        }
        d.copied = true;
        let (services, slices) = d.objects.to_lists();
        self.writer.replace_all(services, slices);
        self.synced();
        info!("cluster index replaced from the direct watch");
    }
}

fn draw_delay(settings: &HubSettings) -> Duration {
    match &settings.fallback {
        Some(fb) if !fb.jitter.is_zero() => fb.jitter.mul_f64(rand::rng().random_range(0.0..1.0)),
        _ => Duration::ZERO,
    }
}

async fn next_direct(direct: &mut Option<Direct>) -> Option<Vec<Change>> {
    match direct {
        Some(d) => d.changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Subscribes to the hubs and folds their streams into `writer` until
/// `shutdown` turns true (or its sender is dropped). Never gives up.
pub async fn run(
    settings: HubSettings,
    writer: IndexWriter,
    metrics: ClusterMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    if settings.addrs.is_empty() {
        warn!("cluster source hub has no hub addresses; cluster names get SERVFAIL");
        return;
    }
    let mut next_addr = rand::rng().random_range(0..settings.addrs.len());
    let mut agent = Agent {
        fallback_delay: draw_delay(&settings),
        settings,
        writer,
        metrics,
        position: None,
        last_contact: Instant::now(),
        direct: None,
    };
    info!(hubs = ?agent.settings.addrs, fallback = agent.settings.fallback.is_some(), "cluster source hub started");
    let (tx, mut events) = mpsc::channel::<(u64, Event)>(16);
    let mut backoff = Backoff(BACKOFF_MIN);
    let mut current: Option<(u64, JoinHandle<()>)> = None;
    let mut ids = 0u64;
    let mut retry_at = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            _ = tokio::time::sleep_until(retry_at), if current.is_none() => {
                ids += 1;
                let addr = agent.settings.addrs[next_addr % agent.settings.addrs.len()];
                debug!(%addr, position = ?agent.position, "subscribing");
                let task = tokio::spawn(session(ids, addr, agent.settings.clone(), agent.position, tx.clone()));
                current = Some((ids, task));
            }
            Some((id, event)) = events.recv() => {
                if current.as_ref().map(|(c, _)| *c) != Some(id) {
                    continue;
                }
                let m = agent.metrics.hub.clone();
                let failed = match event {
                    Event::Opened => {
                        m.sessions.with_label_values(&["ok"]).inc();
                        m.connected.set(1);
                        None
                    }
                    Event::Frame(frame, size) => match agent.apply(frame, size) {
                        Ok(()) => {
                            backoff.reset();
                            None
                        }
                        Err(what) => {
                            let addr = agent.settings.addrs[next_addr % agent.settings.addrs.len()];
                            // Start over from a snapshot.
                            agent.position = None;
                            Some(SubscribeError::Protocol { addr, what })
                        }
                    },
                    Event::Closed(e) => {
                        if m.connected.get() == 0 {
                            m.sessions.with_label_values(&["error"]).inc();
                        }
                        Some(e)
                    }
                };
                if let Some(e) = failed {
                    if let Some((_, task)) = current.take() {
                        task.abort();
                    }
                    m.connected.set(0);
                    let wait = backoff.next();
                    warn!(error = %e, retry_in = ?wait, "hub subscription ended; serving the last index meanwhile");
                    next_addr += 1;
                    retry_at = Instant::now() + wait;
                }
            }
            Some(changes) = next_direct(&mut agent.direct) => agent.direct_changes(changes),
            _ = tick.tick() => {
                agent.metrics.hub.staleness.set(agent.last_contact.elapsed().as_secs_f64());
                agent.maybe_fall_back().await;
                agent.copy_direct();
            }
        }
    }
    if let Some((_, task)) = current {
        task.abort();
    }
    agent.metrics.hub.connected.set(0);
    info!("cluster source hub stopped");
}

/// Resolves once `shutdown` turns true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff(BACKOFF_MIN);
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        for (i, w) in waits.iter().enumerate() {
            let step = (BACKOFF_MIN * 2u32.pow(i as u32)).min(BACKOFF_MAX);
            assert!(*w >= step / 2 && *w <= step, "wait {i}: {w:?} for step {step:?}");
        }
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }

    #[test]
    fn fallback_delay_is_a_share_of_the_jitter() {
        let mut s = HubSettings {
            addrs: vec![],
            token: None,
            timeout: Duration::from_secs(1),
            fallback: None,
            tls: None,
        };
        assert_eq!(draw_delay(&s), Duration::ZERO);
        s.fallback = Some(FallbackSettings {
            after: Duration::from_secs(1),
            jitter: Duration::from_secs(10),
            kubeconfig: None,
        });
        let delays: Vec<Duration> = (0..100).map(|_| draw_delay(&s)).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(10)));
        assert!(delays.iter().any(|d| *d != delays[0]), "drawn, not fixed");
    }
}
