//! Admin HTTP server: `/metrics`, `/healthz` and `/readyz`.
//!
//! Modelled on linkerd2-proxy's admin server. This module owns:
//!
//! * the admin listener socket (bound synchronously in [`AdminServer::spawn`]
//!   so that bind errors surface at start-up, not later in a log line);
//! * a dedicated OS thread running its own *current-thread* tokio runtime, so
//!   the admin endpoints keep answering (liveness probes, metric scrapes) even
//!   while the data-plane runtime is saturated or wedged;
//! * the [`Readiness`] latch that the application flips once its listeners are
//!   bound and flips back while draining.
//!
//! It must never touch the DNS data path: no cache, upstream, or listener
//! state is reachable from here, and nothing here runs on the data-plane
//! runtime. The only shared state is the prometheus [`Registry`] (read via
//! `gather()`) and the readiness flag (a single atomic).
//!
//! A misbehaving scraper cannot pile up work: the number of concurrent admin
//! connections is bounded (a semaphore permit is taken *before* `accept`, so
//! excess clients wait in the kernel backlog), request headers must arrive
//! within a timeout (which also bounds idle keep-alive connections), and every
//! connection has a maximum age after which it is closed gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// Maximum number of admin connections served concurrently.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a complete request head (also bounds how long an
/// idle keep-alive connection is kept open).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long a connection is asked to close after its current request.
const CONNECTION_MAX_AGE: Duration = Duration::from_secs(60);
/// How long a connection may take to finish once asked to close (at max age
/// or at shutdown) before it is dropped.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. EMFILE) to avoid a hot loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Readiness latch shared with the app: false until the listeners are bound,
/// false again while draining.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A latch that starts out not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether `/readyz` reports ready.
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` currently reports ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin address could not be bound.
    #[error("binding admin listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The bound socket could not be configured or registered with the runtime.
    #[error("configuring admin listener {addr}: {source}")]
    Listener { addr: SocketAddr, source: std::io::Error },
    /// The admin runtime could not be built.
    #[error("building admin runtime: {source}")]
    Runtime { source: std::io::Error },
    /// The admin thread could not be spawned.
    #[error("spawning admin thread: {source}")]
    Thread { source: std::io::Error },
    /// The admin thread exited before reporting that it was serving.
    #[error("admin thread exited during start-up")]
    ThreadExited,
}

/// Tunables; fixed in production, shrunk by the tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    connection_max_age: Duration,
    drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_max_age: CONNECTION_MAX_AGE,
            drain_grace: DRAIN_GRACE,
        }
    }
}

/// State the request handler needs.
struct State {
    registry: Registry,
    readiness: Readiness,
}

/// Handle to the running admin server.
///
/// Dropping it without calling [`AdminServer::shutdown`] also stops the
/// server (the shutdown channel closes), but does not wait for the thread.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (port 0 allowed) synchronously so bind errors surface at
    /// start, then serves on its own thread.
    pub fn spawn(
        addr: SocketAddr,
        registry: prometheus::Registry,
        readiness: Readiness,
    ) -> Result<AdminServer, AdminError> {
        Self::spawn_with(addr, registry, readiness, Limits::default())
    }

    fn spawn_with(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        limits: Limits,
    ) -> Result<AdminServer, AdminError> {
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let listener_err = |source| AdminError::Listener { addr, source };
        let local_addr = std_listener.local_addr().map_err(listener_err)?;
        std_listener.set_nonblocking(true).map_err(listener_err)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), AdminError>>(1);
        let state = Arc::new(State { registry, readiness });

        // The runtime is built on the admin thread itself: it is never
        // created or dropped on a caller's (possibly async) thread.
        let thread = std::thread::Builder::new()
            .name("nodens-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(AdminError::Runtime { source }));
                        return;
                    }
                };
                let listener = {
                    let _enter = rt.enter();
                    match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(source) => {
                            let _ = ready_tx.send(Err(AdminError::Listener { addr, source }));
                            return;
                        }
                    }
                };
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                info!(addr = %local_addr, "admin server listening");
                rt.block_on(serve(listener, state, shutdown_rx, limits));
                info!(addr = %local_addr, "admin server stopped");
            })
            .map_err(|source| AdminError::Thread { source })?;

        match ready_rx.recv() {
            Ok(Ok(())) => Ok(AdminServer {
                local_addr,
                shutdown_tx,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(mpsc::RecvError) => {
                let _ = thread.join();
                Err(AdminError::ThreadExited)
            }
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the thread and joins it.
    ///
    /// The listener is closed first; in-flight connections get a short grace
    /// period to finish before they are dropped. This blocks the calling
    /// thread for at most about that grace period.
    pub fn shutdown(self) {
        info!(addr = %self.local_addr, "stopping admin server");
        let _ = self.shutdown_tx.send(true);
        if self.thread.join().is_err() {
            warn!(addr = %self.local_addr, "admin server thread panicked");
        }
    }
}

/// Resolves once shutdown is requested or the [`AdminServer`] handle is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown_rx: watch::Receiver<bool>, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);

    'accept: loop {
        // Take the permit before accepting: at the limit, further clients
        // wait in the kernel backlog instead of costing us anything.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                debug!(max = limits.max_connections, "admin connection limit reached; waiting");
                tokio::select! {
                    biased;
                    _ = stopped(&mut shutdown_rx) => break 'accept,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break 'accept, // never closed
                    },
                }
            }
        };

        let (stream, peer) = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown_rx) => break 'accept,
                res = listener.accept() => match res {
                    Ok(conn) => break conn,
                    Err(error) => {
                        warn!(%error, "admin accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
            }
        };

        let conn_shutdown = shutdown_rx.clone();
        let state = state.clone();
        let http = http.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, state, http, conn_shutdown, limits).await;
            drop(permit);
        });
    }

    // Stop accepting (and release the port) before draining.
    drop(listener);

    // Every connection task got the shutdown signal and closes within
    // `drain_grace`; wait for all permits to come back (with slack), after
    // which dropping the runtime cancels anything left.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let wait = limits.drain_grace + Duration::from_millis(500);
    if tokio::time::timeout(wait, permits.acquire_many(all)).await.is_err() {
        warn!("admin connections still open after drain grace; dropping them");
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    http: hyper::server::conn::http1::Builder,
    mut shutdown_rx: watch::Receiver<bool>,
    limits: Limits,
) {
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, &req)) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);

    let deadline = tokio::time::sleep(limits.connection_max_age);
    tokio::pin!(deadline);
    let mut draining = false;

    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(error) = res {
                    debug!(%peer, %error, "admin connection error");
                }
                return;
            }
            _ = deadline.as_mut() => {
                if draining {
                    debug!(%peer, "admin connection did not close in time; dropping");
                    return;
                }
                conn.as_mut().graceful_shutdown();
                draining = true;
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + limits.drain_grace);
            }
            _ = stopped(&mut shutdown_rx), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + limits.drain_grace);
            }
        }
    }
}

fn route(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        let mut rsp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        rsp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return rsp;
    }
    match path {
        "/metrics" => metrics(&state.registry),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if state.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    if let Err(error) = encoder.encode(&registry.gather(), &mut buf) {
        warn!(%error, "encoding metrics failed");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "failed to encode metrics\n");
    }
    let mut rsp = Response::new(Full::new(Bytes::from(buf)));
    let headers = rsp.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(encoder.format_type()) {
        headers.insert(CONTENT_TYPE, ct);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    fn spawn(registry: Registry, readiness: Readiness) -> AdminServer {
        AdminServer::spawn(loopback(), registry, readiness).expect("spawn admin server")
    }

    /// Sends one request with `Connection: close` and reads to EOF.
    /// Returns (status, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("response within 5s")
            .expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header terminator");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        request(addr, "GET", path).await
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let server = spawn(Registry::new(), Readiness::new());
        let (status, head, body) = get(server.local_addr(), "/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(body.trim(), "ok");
        assert!(head.contains("content-type: text/plain"));
        server.shutdown();
    }

    #[tokio::test]
    async fn readyz_follows_latch() {
        let readiness = Readiness::new();
        let server = spawn(Registry::new(), readiness.clone());
        let addr = server.local_addr();

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body.trim(), "not ready");

        readiness.set_ready(true);
        assert!(readiness.is_ready());
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200);
        assert_eq!(body.trim(), "ready");

        // Draining flips it back.
        readiness.set_ready(false);
        let (status, _, _) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        server.shutdown();
    }

    #[tokio::test]
    async fn metrics_exposes_registered_counter() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("nodens_admin_test_total", "test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(7);

        let server = spawn(registry, Readiness::new());
        let (status, head, body) = get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(body.contains("# TYPE nodens_admin_test_total counter"), "{body}");
        assert!(body.lines().any(|l| l == "nodens_admin_test_total 7"), "{body}");

        counter.inc();
        let (_, _, body) = get(server.local_addr(), "/metrics").await;
        assert!(body.lines().any(|l| l == "nodens_admin_test_total 8"), "{body}");
        server.shutdown();
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let server = spawn(Registry::new(), Readiness::new());
        let (status, _, _) = get(server.local_addr(), "/nope").await;
        assert_eq!(status, 404);
        let (status, _, _) = get(server.local_addr(), "/healthz/extra").await;
        assert_eq!(status, 404);
        server.shutdown();
    }

    #[tokio::test]
    async fn non_get_is_405() {
        let server = spawn(Registry::new(), Readiness::new());
        let (status, head, _) = request(server.local_addr(), "POST", "/healthz").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: get"), "{head}");
        server.shutdown();
    }

    #[test]
    fn shutdown_joins_and_releases_port() {
        let server = spawn(Registry::new(), Readiness::new());
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        // An idle connection must not hold up shutdown.
        let idle = std::net::TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        server.shutdown();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(std::net::TcpStream::connect(addr).is_err());
        drop(idle);
    }

    #[test]
    fn bind_error_surfaces_at_spawn() {
        let taken = std::net::TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        match AdminServer::spawn(addr, Registry::new(), Readiness::new()) {
            Err(AdminError::Bind { addr: a, .. }) => assert_eq!(a, addr),
            other => panic!("expected bind error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn slow_header_is_cut_off() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let server = AdminServer::spawn_with(loopback(), Registry::new(), Readiness::new(), limits).unwrap();
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        // Server closes the connection; read_to_end returns instead of hanging.
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf))
            .await
            .expect("connection closed by header timeout")
            .ok();
        server.shutdown();
    }

    #[tokio::test]
    async fn connection_limit_is_enforced() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let server = AdminServer::spawn_with(loopback(), Registry::new(), Readiness::new(), limits).unwrap();
        let addr = server.local_addr();

        // Hold the only slot with an idle connection.
        let hog = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        // A second client is accepted by the kernel but not served.
        let waiting = tokio::spawn(async move { get(addr, "/healthz").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the connection limit");

        // Freeing the slot lets it through.
        drop(hog);
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served after slot freed")
            .unwrap();
        assert_eq!(status, 200);
        server.shutdown();
    }
}
