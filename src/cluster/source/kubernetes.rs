//! The `kubernetes` source: a direct watch of the API server (DESIGN §4, §5),
//! for small clusters and for the hub.
//!
//! Owns: the Kubernetes client configuration (`client`), two kube-runtime
//! watchers (Services, discovery.k8s.io/v1 EndpointSlices, all namespaces),
//! the backoff between their retries, and the fold of their events into the
//! `IndexWriter`, which it owns for its lifetime. It keeps only the keys
//! (namespace, name) of what the index holds per resource, so a relist can be
//! turned into one diff; never a Kubernetes object, never a reduced object.
//! Must not: keep whole objects (each is reduced and dropped as it arrives),
//! watch anything but Services and EndpointSlices, or retry without a pause.
//!
//! The DESIGN §5 behaviours and how each is achieved:
//! - **Bookmarks**: `watcher::Config::default()` asks for them
//!   (`allowWatchBookmarks=true`); the watcher keeps the bookmark's
//!   resourceVersion as its resume point, so a quiet resource does not fall
//!   out of the watch window.
//! - **Resume from resourceVersion**: when a watch connection ends or breaks,
//!   the kube-runtime watcher re-watches from the last resourceVersion it saw
//!   (no list, no `Init` event).
//! - **Relist on 410 Gone without dropping the old index**: the watcher turns
//!   an expired resourceVersion (an `ERROR` event with code 410) into a new
//!   paged list: `Init`, `InitApply`…, `InitDone`. The reduced objects of that
//!   list are buffered here; on `InitDone` the difference with what the index
//!   holds (upserts, plus deletes of the keys no longer listed) is applied as
//!   one batch, published once. Until then queries keep reading the old
//!   snapshot: a name present before and after never disappears. Every
//!   relist after the first list counts `watch_restarts{resource}`.
//! - **Paged lists**: pages of 500 (`limit`/`continue`), as client-go.
//! - **Backoff with jitter on 429/5xx, honouring Retry-After**, in two layers:
//!   1. kube-client's default retry layer (`Config::default_retry`, on by
//!      default in kube 4) retries a request answered 429, 503 or 504 up to 15
//!      times with jittered exponential backoff from 5 ms, and when the answer
//!      carries a `Retry-After: <seconds>` header it waits at least that long.
//!   2. Every error the watcher reports (a 500, a 429 that outlived those
//!      retries, a broken connection, a 410) pauses that resource's stream
//!      for kube's `DefaultBackoff` (0.8 s doubling up to 30 s, each step
//!      plus 0–100 % random jitter), or for the Status body's
//!      `details.retryAfterSeconds` if longer (the API server sends it with
//!      its 429s; the header is gone by then), capped at 120 s.
//!      kube's own `WatchStreamExt::default_backoff()` is not used: it resets
//!      its backoff on every `Ok` event, and the watcher emits `Init` before
//!      each list attempt, so a failing list would retry every ~1 s forever.
//!      Here the backoff resets only on progress (`InitDone`, `Apply`,
//!      `Delete`).
//! - **Objects reduced as they arrive**: `Service::reduce` /
//!   `EndpointSlice::reduce` on each event; an object that cannot be reduced
//!   is skipped with a warning and `skipped{resource}`, and if an older
//!   version of it is in the index that entry is deleted rather than left
//!   with stale data.
//!
//! Readiness: the index is marked synced once both resources completed their
//! first list; `last_sync` is set then and after every later relist.

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::Api;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::index::IndexWriter;
use crate::cluster::model::{Change, EndpointSlice, ReduceError, Service};
use crate::metrics::ClusterMetrics;

/// Objects per list page (client-go's default).
const PAGE_SIZE: u32 = 500;
/// A server's Retry-After is honoured up to this long; a larger value is
/// more likely a bug than a plan, and the index would go stale meanwhile.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Used if the backoff iterator ever ends (kube's default never does).
const FALLBACK_PAUSE: Duration = Duration::from_secs(30);

/// Why a Kubernetes client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig (given, `$KUBECONFIG` or `~/.kube/config`) could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    /// Running in a pod, but the service account's config could not be loaded.
    #[error("in-cluster config (KUBERNETES_SERVICE_HOST, /var/run/secrets/kubernetes.io/serviceaccount): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    /// The configuration was read but the client could not be built from it.
    #[error("Kubernetes client for {url}: {source}")]
    Client { url: String, source: kube::Error },
}

/// A client for the API server: the kubeconfig at `kubeconfig` if given,
/// else the pod's service account when running in a pod
/// (`KUBERNETES_SERVICE_HOST` set), else the default kubeconfig discovery
/// (`$KUBECONFIG`, then `~/.kube/config`). An explicit path wins over the pod's
/// identity: it was asked for.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(KubeSourceError::InCluster)?
        }
        None => kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|source| KubeSourceError::Kubeconfig {
                path: default_kubeconfig_path(),
                source,
            })?,
    };
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| KubeSourceError::Client { url, source })
}

/// Where the default discovery looks, for error messages.
fn default_kubeconfig_path() -> String {
    match std::env::var_os("KUBECONFIG") {
        Some(v) => format!("$KUBECONFIG={}", v.to_string_lossy()),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".kube/config").display().to_string())
            .unwrap_or_else(|| "~/.kube/config".into()),
    }
}

/// Watches Services and EndpointSlices and folds them into `writer` until
/// `shutdown` turns true (or its sender is dropped). Never returns an error:
/// every failure is retried with backoff while the index keeps its last state.
pub async fn run(
    client: kube::Client,
    mut writer: IndexWriter,
    metrics: ClusterMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut services = pin!(watch_resource::<K8sService>(client.clone()));
    let mut slices = pin!(watch_resource::<K8sSlice>(client));
    let mut svc_state = Tracked::new(K8sService::RESOURCE);
    let mut slice_state = Tracked::new(K8sSlice::RESOURCE);
    let mut synced = false;
    info!(page_size = PAGE_SIZE, "watching services and endpointslices");
    loop {
        let done_list = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(event) = services.next() => svc_state.fold(event, &mut writer, &metrics),
            Some(event) = slices.next() => slice_state.fold(event, &mut writer, &metrics),
            else => break,
        };
        if done_list && svc_state.listed && slice_state.listed {
            metrics.synced();
            if !synced {
                synced = true;
                writer.mark_synced();
                info!(
                    services = writer.service_count(),
                    endpoints = writer.endpoint_count(),
                    "cluster index synced from the API server"
                );
            }
        }
    }
    info!("cluster watch stopped");
}

/// A watched resource: how its objects are keyed and reduced.
trait Watched: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static {
    /// The `resource` label of the metrics.
    const RESOURCE: &'static str;
    fn key(&self) -> Result<Key, ReduceError>;
    /// The reduced object as an upsert, with its key.
    fn upsert(&self) -> Result<(Key, Change), ReduceError>;
    fn delete(key: Key) -> Change;
}

/// (namespace, name).
type Key = (Box<str>, Box<str>);

impl Watched for K8sService {
    const RESOURCE: &'static str = "services";
    fn key(&self) -> Result<Key, ReduceError> {
        Service::key_of(self)
    }
    fn upsert(&self) -> Result<(Key, Change), ReduceError> {
        let s = Service::reduce(self)?;
        Ok(((s.namespace.clone(), s.name.clone()), Change::UpsertService(s)))
    }
    fn delete((namespace, name): Key) -> Change {
        Change::DeleteService { namespace, name }
    }
}

impl Watched for K8sSlice {
    const RESOURCE: &'static str = "endpointslices";
    fn key(&self) -> Result<Key, ReduceError> {
        EndpointSlice::key_of(self)
    }
    fn upsert(&self) -> Result<(Key, Change), ReduceError> {
        let s = EndpointSlice::reduce(self)?;
        Ok(((s.namespace.clone(), s.name.clone()), Change::UpsertSlice(s)))
    }
    fn delete((namespace, name): Key) -> Change {
        Change::DeleteSlice { namespace, name }
    }
}

/// The watcher of one resource, all namespaces, paged, bookmarks on, with
/// backoff between retries.
fn watch_resource<K: Watched>(client: kube::Client) -> impl Stream<Item = watcher::Result<Event<K>>> + Send {
    // bookmarks: on by default; page_size spelled out because it is a decision.
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    with_backoff(watcher::watcher(Api::<K>::all(client), config), K::RESOURCE)
}

/// Pauses `stream` after each error for the next backoff step, or for the
/// server's Retry-After if longer. The backoff resets only on progress: a
/// completed list or a live event, not the `Init` the watcher emits before
/// every list attempt.
fn with_backoff<S, K>(stream: S, resource: &'static str) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    K: Send + 'static,
{
    let state = (Box::pin(stream), DefaultBackoff::default(), None::<Duration>);
    futures::stream::unfold(state, move |(mut stream, mut backoff, pause)| async move {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let item = stream.next().await?;
        let pause = match &item {
            Err(e) => {
                let pause = pause_after(backoff.next(), e);
                if status_of(e).is_some_and(|s| s.code == 410) {
                    info!(resource, retry_in = ?pause, "watch history expired (410 Gone), relisting");
                } else {
                    warn!(resource, error = %e, retry_in = ?pause, "watch failed, retrying");
                }
                Some(pause)
            }
            Ok(Event::Init | Event::InitApply(_)) => None,
            Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                backoff.reset();
                None
            }
        };
        Some((item, (stream, backoff, pause)))
    })
}

/// max(backoff step, the Status body's retryAfterSeconds), the latter capped.
fn pause_after(step: Option<Duration>, error: &watcher::Error) -> Duration {
    let step = step.unwrap_or(FALLBACK_PAUSE);
    let server = status_of(error)
        .and_then(|s| s.details.as_ref())
        .map(|d| Duration::from_secs(d.retry_after_seconds.into()).min(MAX_RETRY_AFTER))
        .unwrap_or_default();
    step.max(server)
}

/// The API's Status behind a watcher error, if the server sent one.
fn status_of(error: &watcher::Error) -> Option<&Status> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s),
        watcher::Error::WatchError(s) => Some(s),
        _ => None,
    }
}

/// The fold state of one resource.
struct Tracked {
    resource: &'static str,
    /// Keys of this resource's objects the index holds: what a relist is diffed against.
    known: HashSet<Key>,
    /// Between `Init` and `InitDone`: the reduced objects listed so far.
    relist: Option<Relist>,
    /// `Init` events seen; every one after the first is a restart.
    inits: u64,
    /// A first list completed.
    listed: bool,
}

#[derive(Default)]
struct Relist {
    upserts: Vec<Change>,
    keys: HashSet<Key>,
}

impl Tracked {
    fn new(resource: &'static str) -> Tracked {
        Tracked {
            resource,
            known: HashSet::new(),
            relist: None,
            inits: 0,
            listed: false,
        }
    }

    /// Folds one event into the index; returns true when a list just completed.
    fn fold<K: Watched>(
        &mut self,
        event: watcher::Result<Event<K>>,
        writer: &mut IndexWriter,
        metrics: &ClusterMetrics,
    ) -> bool {
        // Errors were logged (and paused on) by `with_backoff`; the watcher recovers by itself.
        let Ok(event) = event else { return false };
        match event {
            Event::Init => {
                self.inits += 1;
                if self.inits > 1 {
                    metrics.watch_restarts.with_label_values(&[self.resource]).inc();
                }
                debug!(resource = self.resource, "list started");
                // A list that failed halfway is discarded with its buffer.
                self.relist = Some(Relist::default());
            }
            Event::InitApply(obj) => match obj.upsert() {
                Ok((key, change)) => {
                    let relist = self.relist.get_or_insert_with(Relist::default);
                    if relist.keys.insert(key) {
                        relist.upserts.push(change);
                    }
                }
                Err(e) => self.skip(&obj, &e, metrics),
            },
            Event::InitDone => {
                let Relist { upserts, keys } = self.relist.take().unwrap_or_default();
                let deletes: Vec<Change> = self.known.difference(&keys).cloned().map(K::delete).collect();
                debug!(
                    resource = self.resource,
                    listed = keys.len(),
                    removed = deletes.len(),
                    "list complete"
                );
                // One batch, one publish: the old state serves until the whole list is in.
                writer.apply_batch(deletes.into_iter().chain(upserts));
                self.known = keys;
                self.listed = true;
                metrics.published(writer);
                return true;
            }
            Event::Apply(obj) => match obj.upsert() {
                Ok((key, change)) => {
                    self.known.insert(key);
                    writer.apply(change);
                    metrics.published(writer);
                }
                Err(e) => {
                    self.skip(&obj, &e, metrics);
                    // Never leave the previous version serving stale data.
                    if let Ok(key) = obj.key() {
                        if self.known.remove(&key) {
                            writer.apply(K::delete(key));
                            metrics.published(writer);
                        }
                    }
                }
            },
            Event::Delete(obj) => match obj.key() {
                Ok(key) => {
                    if self.known.remove(&key) {
                        writer.apply(K::delete(key));
                        metrics.published(writer);
                    }
                }
                Err(e) => self.skip(&obj, &e, metrics),
            },
        }
        false
    }

    fn skip<K: Watched>(&self, obj: &K, error: &ReduceError, metrics: &ClusterMetrics) {
        let meta = obj.meta();
        warn!(
            resource = self.resource,
            namespace = meta.namespace.as_deref().unwrap_or(""),
            name = meta.name.as_deref().unwrap_or(""),
            %error,
            "skipping an object that cannot be served"
        );
        metrics.skipped.with_label_values(&[self.resource]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::StatusDetails;

    fn status(code: u16, retry_after_seconds: u32) -> Box<Status> {
        let details = StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds,
        };
        Status::failure("slow down", "TooManyRequests")
            .with_code(code)
            .with_details(details)
            .boxed()
    }

    #[test]
    fn pause_is_the_longer_of_backoff_and_retry_after() {
        let step = Some(Duration::from_millis(800));
        let e = watcher::Error::InitialListFailed(kube::Error::Api(status(429, 3)));
        assert_eq!(pause_after(step, &e), Duration::from_secs(3));
        let e = watcher::Error::WatchStartFailed(kube::Error::Api(status(429, 0)));
        assert_eq!(pause_after(step, &e), Duration::from_millis(800));
        let e = watcher::Error::WatchError(status(429, 100_000));
        assert_eq!(pause_after(step, &e), MAX_RETRY_AFTER);
        assert_eq!(pause_after(None, &watcher::Error::NoResourceVersion), FALLBACK_PAUSE);
    }

    fn metrics() -> ClusterMetrics {
        crate::metrics::Metrics::new(prometheus::Registry::new())
            .unwrap()
            .cluster
    }

    fn svc(name: &str, ip: &str) -> K8sService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"clusterIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn relist_is_one_diff_and_a_bad_update_removes_the_old_entry() {
        let (mut w, h) = crate::cluster::index::new_index();
        let m = metrics();
        let mut t = Tracked::new("services");
        for e in [
            Event::Init,
            Event::InitApply(svc("a", "10.0.0.1")),
            Event::InitApply(svc("b", "10.0.0.2")),
        ] {
            assert!(!t.fold(Ok(e), &mut w, &m));
        }
        assert_eq!(h.load().services.len(), 0, "nothing published before InitDone");
        assert!(t.fold(Ok(Event::<K8sService>::InitDone), &mut w, &m));
        assert_eq!(h.load().services.len(), 2);

        // Relist: a stays, b goes, c comes; all in one publish.
        let before = h.load().version;
        for e in [
            Event::Init,
            Event::InitApply(svc("a", "10.0.0.1")),
            Event::InitApply(svc("c", "10.0.0.3")),
        ] {
            t.fold(Ok(e), &mut w, &m);
            assert_eq!(h.load().version, before);
        }
        t.fold(Ok(Event::<K8sService>::InitDone), &mut w, &m);
        let snap = h.load();
        assert_eq!(snap.version, before + 1);
        let names = |n: &str| {
            snap.services
                .contains_key(&crate::cluster::index::service_labels("ns", n)[..])
        };
        assert!(names("a") && !names("b") && names("c"));
        assert_eq!(m.watch_restarts.with_label_values(&["services"]).get(), 1);

        // An update that no longer reduces deletes the old version.
        t.fold(Ok(Event::Apply(svc("a", "not-an-ip"))), &mut w, &m);
        assert!(!h
            .load()
            .services
            .contains_key(&crate::cluster::index::service_labels("ns", "a")[..]));
        assert_eq!(m.skipped.with_label_values(&["services"]).get(), 1);
    }
}
