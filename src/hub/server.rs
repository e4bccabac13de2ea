//! The hub's index endpoint: `GET /v1/index?origin=O&version=V`, answered
//! with a long-lived stream of `cluster::codec` frames (DESIGN §5).
//!
//! Owns: the listener, the connection limit, authentication, and one
//! `Cursor` per stream. Must not: write anything (the endpoint is
//! read-only), or buffer for a subscriber beyond what its connection can
//! take: a stream is pulled by hyper when the connection has room (HTTP/2
//! flow control, or the socket for HTTP/1.1), and only then does its cursor
//! take frames from the shared `Feed`.
//!
//! Protocol: the agent sends the origin and version of the index it holds
//! (none on its first connection). The stream is the codec preamble, then:
//! - if the origin is this hub's and the history still has every delta after
//!   the version: a heartbeat (the resume acknowledged), then those deltas;
//! - otherwise a snapshot (reason `new`, `origin` or `behind`), then deltas;
//! - live deltas as they are published, several per chunk when the agent is
//!   behind (at most `batch_bytes`), and a heartbeat after `heartbeat` of
//!   silence, so agents can tell a quiet hub from a dead one;
//! - a subscriber that fell out of the history gets a snapshot (a resnap).
//!
//! HTTP/2 (h2c, prior knowledge) and HTTP/1.1 (chunked) are both served;
//! agents use HTTP/2, curl can use either. With a TLS config (`super::tls`)
//! both are served over TLS only: the handshake runs in the connection's
//! task, under its permit and the head-read timeout, never in the accept loop. Answers: 401 without the shared
//! token (when one is set), 503 until the hub's index first synced (the
//! agent tries another hub), 400 for a bad query, 404/405 for anything else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::feed::{CatchUp, Feed};
use crate::cluster::codec::{self, CONTENT_TYPE as CONTENT_TYPE_INDEX, INDEX_PATH, MAGIC};
use crate::cluster::index::IndexHandle;
use crate::metrics::HubMetrics;

/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a silent agent's connection lives on (see `dead_peer_limits`).
const DEAD_PEER: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` (e.g. EMFILE).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The endpoint's settings.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// The shared secret (`Authorization: Bearer`); `None`: no auth.
    pub token: Option<String>,
    pub heartbeat: Duration,
    pub max_subscribers: usize,
    /// Deltas sent to a subscriber that is behind go in chunks of about this size.
    pub batch_bytes: usize,
    /// Serve over TLS with this config; `None`: cleartext (h2c, HTTP/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What a stream needs besides its cursor.
struct Context {
    feed: Arc<Feed>,
    index: IndexHandle,
    settings: ServerSettings,
    metrics: HubMetrics,
    shutdown: watch::Receiver<bool>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Accepts subscribers until `shutdown` turns true, then drops every stream.
pub async fn serve(
    listener: TcpListener,
    feed: Arc<Feed>,
    index: IndexHandle,
    settings: ServerSettings,
    metrics: HubMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_subscribers));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // No HTTP/2 PINGs: a busy agent answers them late and would be cut off
    // (seen with 1,000 agents on 2 cores). Vanished agents are found by the
    // kernel instead (`dead_peer_limits`); the heartbeats tell agents the hub is alive.
    http.http2()
        .timer(TokioTimer::new())
        // Bounds what hyper queues per stream beyond the agent's window.
        .max_send_buf_size(settings.batch_bytes);
    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let ctx = Arc::new(Context {
        feed,
        index,
        settings,
        metrics,
        shutdown: shutdown.clone(),
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "hub serving the cluster index");
    }
    let mut connections = JoinSet::new();
    'accept: loop {
        // The permit before the accept: at the limit, subscribers wait in the kernel's backlog.
        let permit = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break 'accept,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'accept,
            },
        };
        let (stream, peer) = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break 'accept,
                r = listener.accept() => match r {
                    Ok(c) => break c,
                    Err(error) => {
                        warn!(%error, "hub accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        dead_peer_limits(&stream);
        let (http, ctx, tls) = (http.clone(), ctx.clone(), tls.clone());
        connections.spawn(async move {
            let svc = hyper::service::service_fn(|req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(&ctx, &req, peer)) }
            });
            let handshakes = &ctx.metrics.tls_handshakes;
            let served = match tls {
                None => http.serve_connection(TokioIo::new(stream), svc).await,
                Some(acceptor) => match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        handshakes.with_label_values(&["ok"]).inc();
                        http.serve_connection(TokioIo::new(stream), svc).await
                    }
                    Ok(Err(error)) => {
                        handshakes.with_label_values(&["failed"]).inc();
                        debug!(%peer, %error, "hub TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        handshakes.with_label_values(&["timeout"]).inc();
                        debug!(%peer, "hub TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(error) = served {
                debug!(%peer, %error, "hub connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Streams end with their connections: agents see the hub go and move on.
    connections.shutdown().await;
    info!("hub server stopped");
}

/// A node that vanished without closing its connections (powered off,
/// partitioned) is dropped by the kernel: heartbeats left unacknowledged for
/// `DEAD_PEER` (TCP_USER_TIMEOUT), or, on a connection with nothing in
/// flight, keepalive probes unanswered. Both are answered by the agent's
/// kernel, so an agent whose process is merely busy is never cut off.
fn dead_peer_limits(stream: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(DEAD_PEER / 2)
        .with_interval(DEAD_PEER / 6)
        .with_retries(3);
    if let Err(error) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_user_timeout(Some(DEAD_PEER)))
    {
        debug!(%error, "could not set the dead-peer limits");
    }
}

fn route(ctx: &Arc<Context>, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let outcome = |o: &str| ctx.metrics.requests.with_label_values(&[o]).inc();
    if req.uri().path() != INDEX_PATH {
        outcome("bad_request");
        return text(StatusCode::NOT_FOUND, "not found; the index is at GET /v1/index\n");
    }
    if req.method() != Method::GET {
        outcome("bad_request");
        let mut rsp = text(StatusCode::METHOD_NOT_ALLOWED, "the hub is read-only\n");
        rsp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return rsp;
    }
    if !authorized(req, ctx.settings.token.as_deref()) {
        outcome("unauthorized");
        let mut rsp = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
        rsp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return rsp;
    }
    if !ctx.index.is_synced() {
        outcome("not_ready");
        return text(StatusCode::SERVICE_UNAVAILABLE, "the hub's index has not synced yet\n");
    }
    let Some((origin, version)) = position(req.uri().query()) else {
        outcome("bad_request");
        return text(
            StatusCode::BAD_REQUEST,
            "query: origin=<u64>&version=<u64>, both or neither\n",
        );
    };
    outcome("ok");
    let feed = &ctx.feed;
    let (at, reason) = match (origin, version) {
        (0, _) => (None, "new"),
        (o, v) if o == feed.origin() && feed.can_resume(v) => (Some(v), ""),
        (o, _) if o == feed.origin() => (None, "behind"),
        _ => (None, "origin"),
    };
    debug!(%peer, origin, version, resume = at.is_some(), "subscriber");
    let cursor = Cursor {
        ctx: ctx.clone(),
        rx: feed.watch(),
        shutdown: ctx.shutdown.clone(),
        at,
        reason,
        preamble: true,
        acknowledge: at.is_some(),
        _subscriber: Subscriber::new(&ctx.metrics),
    };
    let mut rsp = Response::new(StreamBody::new(cursor.into_stream()).boxed_unsync());
    let headers = rsp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_INDEX));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

/// `origin=O&version=V` (decimal); neither means a new subscriber (0, 0).
fn position(query: Option<&str>) -> Option<(u64, u64)> {
    let (mut origin, mut version) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=')? {
            ("origin", v) => origin = Some(v.parse().ok()?),
            ("version", v) => version = Some(v.parse().ok()?),
            _ => {}
        }
    }
    match (origin, version) {
        (Some(o), Some(v)) => Some((o, v)),
        (None, None) => Some((0, 0)),
        _ => None,
    }
}

/// Compares the bearer token in constant time (for equal lengths).
fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let sent = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    sent.len() == token.len() && sent.bytes().zip(token.bytes()).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    rsp
}

/// Counts an open stream for as long as it lives.
struct Subscriber(HubMetrics);

impl Subscriber {
    fn new(metrics: &HubMetrics) -> Subscriber {
        metrics.subscribers.inc();
        Subscriber(metrics.clone())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.subscribers.dec();
    }
}

/// One subscriber's position and what it is owed.
struct Cursor {
    ctx: Arc<Context>,
    rx: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// The version the subscriber has everything up to; `None`: it needs a snapshot.
    at: Option<u64>,
    /// Why the next snapshot is sent (the metric's label).
    reason: &'static str,
    preamble: bool,
    /// A resumed stream starts with a heartbeat, so the agent knows at once.
    acknowledge: bool,
    _subscriber: Subscriber,
}

impl Cursor {
    fn into_stream(self) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut c| async move {
            let chunk = c.next_chunk().await?;
            Some((Ok(Frame::data(chunk)), c))
        })
    }

    fn sent(&self, kind: &str, frames: usize, bytes: usize) {
        let m = &self.ctx.metrics;
        m.frames_sent.with_label_values(&[kind]).inc_by(frames as u64);
        m.bytes_sent.with_label_values(&[kind]).inc_by(bytes as u64);
    }

    fn heartbeat(&mut self, version: u64) -> Bytes {
        let b = Bytes::from(codec::encode_heartbeat(self.ctx.feed.origin(), version));
        self.sent("heartbeat", 1, b.len());
        b
    }

    /// The next chunk of the stream; `None` ends it (hub shutting down).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if std::mem::take(&mut self.preamble) {
            return Some(Bytes::from_static(&MAGIC));
        }
        let feed = self.ctx.feed.clone();
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let Some(at) = self.at else {
                let (version, bytes) = feed.snapshot().await;
                self.ctx.metrics.snapshots_sent.with_label_values(&[self.reason]).inc();
                self.sent("snapshot", 1, bytes.len());
                self.at = Some(version);
                return Some(bytes);
            };
            if std::mem::take(&mut self.acknowledge) {
                return Some(self.heartbeat(at));
            }
            // Mark the current version seen before looking, so a publish after the look wakes us.
            self.rx.borrow_and_update();
            match feed.catch_up(at, self.ctx.settings.batch_bytes) {
                CatchUp::Behind => {
                    debug!(at, "subscriber fell out of the history: resnap");
                    self.reason = "behind";
                    self.at = None;
                }
                CatchUp::Frames { bytes, to, frames } => {
                    self.at = Some(to);
                    self.sent("delta", frames, bytes.len());
                    return Some(bytes);
                }
                CatchUp::UpToDate { version } => {
                    self.at = Some(version);
                    tokio::select! {
                        changed = self.rx.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        _ = tokio::time::sleep(self.ctx.settings.heartbeat) => {
                            return Some(self.heartbeat(version));
                        }
                        stop = self.shutdown.changed() => {
                            if stop.is_err() {
                                return None;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Resolves once `shutdown` turns true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(position(None), Some((0, 0)));
        assert_eq!(position(Some("origin=7&version=9")), Some((7, 9)));
        assert_eq!(position(Some("version=9&origin=7&x=1")), Some((7, 9)));
        assert_eq!(position(Some("origin=7")), None);
        assert_eq!(position(Some("origin=-1&version=0")), None);
        assert_eq!(position(Some("origin")), None);
    }
}
