//! A fake Kubernetes API server for the integration tests, in-process, over
//! real HTTP/1.1 on 127.0.0.1 (hyper), for a real `kube::Client`.
//!
//! It serves what nodens' `kubernetes` source asks for, as the API server
//! does:
//! - `GET /api/v1/services` and `GET /apis/discovery.k8s.io/v1/endpointslices`
//!   (all namespaces): a `ServiceList` / `EndpointSliceList` with
//!   `metadata.resourceVersion`, paged by `limit`/`continue`;
//! - the same paths with `watch=true&resourceVersion=N`: a chunked stream of
//!   JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}`,
//!   first replaying the history after N, then live events; a watch from a
//!   resourceVersion older than the history gets an `ERROR` event with a 410
//!   `Status` (Expired) and the stream ends, as the API server's watch cache
//!   answers;
//! - `GET /version`.
//!
//! Objects are `serde_json::Value`s, keyed by kind, namespace and name;
//! every change takes the next value of one global resourceVersion counter
//! and is stamped into the object's `metadata.resourceVersion`.
//!
//! Test controls: [`FakeKubeApi::create`]/[`update`](FakeKubeApi::update)/
//! [`delete`](FakeKubeApi::delete) push events to open watches;
//! [`expire_history`](FakeKubeApi::expire_history) forces a relist;
//! [`drop_watches`](FakeKubeApi::drop_watches) breaks open watch connections
//! mid-stream, [`end_watches`](FakeKubeApi::end_watches) ends them cleanly (a
//! server-side timeout); [`bookmark`](FakeKubeApi::bookmark) sends a BOOKMARK;
//! [`fail_next`](FakeKubeApi::fail_next) answers the next requests with an
//! error status (and `Retry-After`); [`set_list_delay`](FakeKubeApi::set_list_delay)
//! slows lists down. Every request is recorded ([`requests`](FakeKubeApi::requests))
//! with its time, verb, query and answer, so tests can count and time them.
//!
//! Use it with [`FakeKubeApi::client`] (a `kube::Client` built from
//! `kube::Config::new`) or [`FakeKubeApi::kubeconfig_file`] (a kubeconfig
//! YAML pointing at it, for the binary or `kubernetes::client`).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, io::Error>;
type Line = Result<Bytes, io::Error>;

/// The two resources nodens watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Services, Resource::EndpointSlices];

    /// The collection path (all namespaces).
    pub fn path(self) -> &'static str {
        match self {
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    /// The resource of an object, from its `kind`.
    pub fn of(obj: &Value) -> Resource {
        match obj["kind"].as_str() {
            Some("Service") => Resource::Services,
            Some("EndpointSlice") => Resource::EndpointSlices,
            other => panic!("the fake API serves Services and EndpointSlices, not {other:?}"),
        }
    }

    fn from_path(path: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.path() == path)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    List,
    Watch,
    /// `/version` or anything else.
    Other,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived (before any fault or delay).
    pub at: Instant,
    pub resource: Option<Resource>,
    pub verb: Verb,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
}

impl RequestRecord {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A server-side fault: the next `remaining` matching requests are answered
/// with `status` (a `Status` body, and `Retry-After` if set).
#[derive(Clone, Debug)]
struct Fault {
    resource: Option<Resource>,
    remaining: usize,
    status: u16,
    retry_after: Option<u64>,
}

struct HistoryEvent {
    rv: u64,
    resource: Resource,
    line: Bytes,
}

struct OpenWatch {
    resource: Resource,
    tx: mpsc::UnboundedSender<Line>,
}

#[derive(Default)]
struct State {
    /// The global resourceVersion: the last one handed out.
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<HistoryEvent>,
    /// Watches from a resourceVersion below this get 410 Gone (history compacted).
    oldest_rv: u64,
    watches: Vec<OpenWatch>,
    faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
    list_delay: Duration,
}

/// The fake API server; stops when dropped.
pub struct FakeKubeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

impl FakeKubeApi {
    /// Starts the server on an ephemeral port of 127.0.0.1 on the current
    /// runtime, holding `initial_objects` (Services and EndpointSlices, each
    /// with `kind`, `metadata.namespace` and `metadata.name`).
    pub async fn start(initial_objects: Vec<Value>) -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let server = tokio::spawn(serve(listener, state.clone()));
        let api = FakeKubeApi { addr, state, server };
        for obj in initial_objects {
            api.create(obj);
        }
        api
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real `kube::Client` for this server (kube's defaults, including its
    /// retry layer). Call it inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).expect("a kube client for the fake API server")
    }

    /// Writes a kubeconfig pointing at this server to `dir/kubeconfig.yaml`
    /// (no credentials, plain HTTP) and returns its path.
    pub fn kubeconfig_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig.yaml");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, yaml).expect("write the kubeconfig");
        path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Adds (or replaces) an object: an ADDED event. Returns its resourceVersion.
    pub fn create(&self, obj: Value) -> u64 {
        self.state().put(obj, "ADDED")
    }

    /// Replaces an object: a MODIFIED event. Returns its resourceVersion.
    pub fn update(&self, obj: Value) -> u64 {
        self.state().put(obj, "MODIFIED")
    }

    /// Removes an object: a DELETED event carrying its last state. Returns the
    /// deletion's resourceVersion; panics if there is no such object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> u64 {
        let mut s = self.state();
        let mut obj = s
            .objects
            .remove(&(resource, namespace.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {} {namespace}/{name} to delete", resource.kind()));
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.event(resource, "DELETED", obj);
        rv
    }

    /// The global resourceVersion now.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Compacts the history: open watches get an `ERROR` 410 (Expired) event
    /// and end; any later watch from an older resourceVersion gets the same.
    /// The client must relist.
    pub fn expire_history(&self) {
        let mut s = self.state();
        s.rv += 1;
        s.oldest_rv = s.rv;
        s.history.clear();
        for w in s.watches.drain(..) {
            let _ = w.tx.send(Ok(expired_line(w.resource)));
        }
    }

    /// Breaks every open watch connection mid-stream (the connection is cut
    /// without the end of the chunked body), as a lost connection looks.
    pub fn drop_watches(&self) {
        for w in self.state().watches.drain(..) {
            let _ = w.tx.send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "dropped by the test",
            )));
        }
    }

    /// Ends every open watch cleanly, as the API server does at `timeoutSeconds`.
    pub fn end_watches(&self) {
        self.state().watches.clear();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch;
    /// returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let mut s = self.state();
        let rv = s.rv;
        s.watches
            .retain(|w| w.tx.send(Ok(bookmark_line(w.resource, rv))).is_ok());
        rv
    }

    /// Open watch streams, per resource.
    pub fn open_watches(&self, resource: Resource) -> usize {
        self.state()
            .watches
            .iter()
            .filter(|w| w.resource == resource && !w.tx.is_closed())
            .count()
    }

    /// Answers the next `n` requests (any resource, list or watch) with
    /// `status` and a `Status` body; with `retry_after`, also the
    /// `Retry-After` header and `details.retryAfterSeconds`, as the API server
    /// sends with a 429.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.state().faults.push_back(Fault {
            resource: None,
            remaining: n,
            status,
            retry_after,
        });
    }

    /// As `fail_next`, for the requests of one resource only.
    pub fn fail_next_on(&self, resource: Resource, n: usize, status: u16, retry_after: Option<u64>) {
        self.state().faults.push_back(Fault {
            resource: Some(resource),
            remaining: n,
            status,
            retry_after,
        });
    }

    /// Forgets every pending fault.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Delays every list answer (each page) by `delay`, to widen a relist.
    pub fn set_list_delay(&self, delay: Duration) {
        self.state().list_delay = delay;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().requests.clone()
    }

    /// The requests of one resource (and one verb, if given).
    pub fn requests_of(&self, resource: Resource, verb: Option<Verb>) -> Vec<RequestRecord> {
        let s = self.state();
        s.requests
            .iter()
            .filter(|r| r.resource == Some(resource) && verb.is_none_or(|v| v == r.verb))
            .cloned()
            .collect()
    }

    /// List requests (each page counts) for `resource`.
    pub fn list_requests(&self, resource: Resource) -> usize {
        self.requests_of(resource, Some(Verb::List)).len()
    }

    /// Watch requests for `resource`.
    pub fn watch_requests(&self, resource: Resource) -> usize {
        self.requests_of(resource, Some(Verb::Watch)).len()
    }

    /// All requests for `resource`, answered or failed.
    pub fn total_requests(&self, resource: Resource) -> usize {
        self.requests_of(resource, None).len()
    }
}

impl State {
    fn put(&mut self, mut obj: Value, kind: &'static str) -> u64 {
        let resource = Resource::of(&obj);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .expect("metadata.namespace")
            .to_string();
        let name = obj["metadata"]["name"].as_str().expect("metadata.name").to_string();
        self.rv += 1;
        let rv = self.rv;
        obj["apiVersion"] = json!(resource.api_version());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert((resource, ns, name), obj.clone());
        self.event(resource, kind, obj);
        rv
    }

    /// Records an event in the history and sends it to the open watches of its resource.
    fn event(&mut self, resource: Resource, kind: &'static str, obj: Value) {
        let line = event_line(kind, &obj);
        self.history.push(HistoryEvent {
            rv: self.rv,
            resource,
            line: line.clone(),
        });
        self.watches
            .retain(|w| w.resource != resource || w.tx.send(Ok(line.clone())).is_ok());
    }

    /// The fault for the next request of `resource`, if any is pending.
    fn take_fault(&mut self, resource: Option<Resource>) -> Option<(u16, Option<u64>)> {
        let i = self
            .faults
            .iter()
            .position(|f| f.resource.is_none() || f.resource == resource)?;
        let f = &mut self.faults[i];
        f.remaining -= 1;
        let answer = (f.status, f.retry_after);
        if f.remaining == 0 {
            self.faults.remove(i);
        }
        Some(answer)
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    v.push(b'\n');
    v.into()
}

fn bookmark_line(resource: Resource, rv: u64) -> Bytes {
    event_line(
        "BOOKMARK",
        &json!({"kind": resource.kind(), "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

fn expired_line(_resource: Resource) -> Bytes {
    event_line(
        "ERROR",
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}),
    )
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    let mut res = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
    res
}

fn status_body(code: u16, reason: &str, message: &str, retry_after: Option<u64>) -> Value {
    let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code});
    if let Some(secs) = retry_after {
        v["details"] = json!({"retryAfterSeconds": secs});
    }
    v
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(byte) => {
                    out.push(byte);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let resource = Resource::from_path(&path);
    let verb = match (resource, param("watch").as_deref()) {
        (Some(_), Some("true" | "1")) => Verb::Watch,
        (Some(_), _) => Verb::List,
        (None, _) => Verb::Other,
    };
    let record = |s: &mut State, status: StatusCode| {
        s.requests.push(RequestRecord {
            at,
            resource,
            verb,
            query: query.clone(),
            status: status.as_u16(),
        })
    };

    let (fault, list_delay) = {
        let mut s = state.lock().unwrap();
        let fault = if verb == Verb::Other {
            None
        } else {
            s.take_fault(resource)
        };
        if let Some((code, _)) = fault {
            record(&mut s, StatusCode::from_u16(code).unwrap());
        }
        (fault, s.list_delay)
    };
    if let Some((code, retry_after)) = fault {
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let mut res = full(
            StatusCode::from_u16(code).unwrap(),
            status_body(code, reason, "injected by the test", retry_after),
        );
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.to_string().parse().unwrap());
        }
        return Ok(res);
    }

    let Some(resource) = resource else {
        let mut s = state.lock().unwrap();
        if path == "/version" {
            record(&mut s, StatusCode::OK);
            return Ok(full(
                StatusCode::OK,
                json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}),
            ));
        }
        record(&mut s, StatusCode::NOT_FOUND);
        return Ok(full(
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", "the fake serves no such path", None),
        ));
    };

    if verb == Verb::Watch {
        let mut s = state.lock().unwrap();
        record(&mut s, StatusCode::OK);
        let from: u64 = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(s.rv);
        let (tx, rx) = mpsc::unbounded_channel::<Line>();
        if from < s.oldest_rv {
            let _ = tx.send(Ok(expired_line(resource)));
            drop(tx);
        } else {
            for e in s.history.iter().filter(|e| e.resource == resource && e.rv > from) {
                let _ = tx.send(Ok(e.line.clone()));
            }
            s.watches.push(OpenWatch { resource, tx });
        }
        let lines = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) });
        let body = StreamBody::new(lines.map(|l| l.map(Frame::data))).boxed_unsync();
        let mut res = Response::new(body);
        res.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
        return Ok(res);
    }

    // A list: `limit` objects from the offset in `continue` ("<rv>:<offset>").
    if !list_delay.is_zero() {
        tokio::time::sleep(list_delay).await;
    }
    let mut s = state.lock().unwrap();
    record(&mut s, StatusCode::OK);
    let (list_rv, offset) = match param("continue").as_deref().and_then(|c| c.split_once(':')) {
        Some((rv, off)) => (rv.parse().unwrap_or(s.rv), off.parse().unwrap_or(0)),
        None => (s.rv, 0usize),
    };
    let limit: usize = param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all: Vec<&Value> = s
        .objects
        .iter()
        .filter(|((r, _, _), _)| *r == resource)
        .map(|(_, v)| v)
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).map(|v| (*v).clone()).collect();
    let next = offset.saturating_add(page.len());
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if next < all.len() {
        metadata["continue"] = json!(format!("{list_rv}:{next}"));
        metadata["remainingItemCount"] = json!(all.len() - next);
    }
    Ok(full(
        StatusCode::OK,
        json!({"kind": format!("{}List", resource.kind()), "apiVersion": resource.api_version(),
               "metadata": metadata, "items": page}),
    ))
}

// ---------------------------------------------------------------------------
// Object builders
// ---------------------------------------------------------------------------

/// A ClusterIP Service with the given cluster IPs (first is `clusterIP`) and
/// one named port `http` 80/TCP.
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str]) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    })
}

/// A headless Service (`clusterIP: None`).
pub fn headless_service(namespace: &str, name: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    })
}

/// An ExternalName Service.
pub fn external_name_service(namespace: &str, name: &str, target: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"type": "ExternalName", "externalName": target}
    })
}

/// An EndpointSlice of `service` with one ready endpoint per address (the
/// address family from the first address), port `http` 8080/TCP.
pub fn endpoint_slice(namespace: &str, name: &str, service: &str, addresses: &[&str]) -> Value {
    let family = if addresses.first().is_some_and(|a| a.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}
