//! The `static` cluster source: the cluster state read from a file — a
//! `kubectl get svc,endpointslices -A -o yaml` (or `-o json`) dump — and
//! reloaded when the file changes. For demos, development and tests without
//! a cluster (`config/example-cluster.yaml` is the shipped demo).
//!
//! Owns: reading and parsing the file, reducing each object with
//! `model::{Service, EndpointSlice}::reduce`, polling the file for changes,
//! and, while `run` runs, the `IndexWriter`: one `replace_all` per load, so a
//! reload never shows a half-applied state. Must not: keep a Kubernetes
//! object past its reduction; touch the index when the file cannot be read
//! or parsed (the previous index keeps serving, and the index stays unsynced
//! if nothing was ever loaded); call the network.
//!
//! Accepted shapes, in YAML or JSON: a `List` (or a typed list such as
//! `ServiceList`, whose items may omit `kind`) with `items`; several
//! documents (`---` in YAML, concatenated values in JSON, e.g. `jq -c`
//! output); a single object; a top-level array of objects. Items are
//! dispatched on `kind`: `Service` and `EndpointSlice` are used, other kinds
//! are ignored. An item that does not deserialize or reduce is skipped with
//! a warning and counted in `nodens_cluster_objects_skipped_total`; a
//! document that is not an object at all makes the whole file an error,
//! since a file of garbage must not load as an empty cluster.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::cluster::index::IndexWriter;
use crate::cluster::model::{EndpointSlice, Service};
use crate::metrics::ClusterMetrics;

/// Why a cluster-state file could not be loaded; the previous index stays.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("reading cluster state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cluster state {path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("cluster state {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("cluster state {path}: document {document} is not a Kubernetes object (a mapping with a `kind`)")]
    NotAnObject { path: PathBuf, document: usize },
    #[error("cluster state {path}: document {document} is a {kind} without an `items` list")]
    BadList {
        path: PathBuf,
        document: usize,
        kind: String,
    },
    /// No document at all. Treated as an error, not as an empty cluster: a
    /// file caught between truncation and rewrite reads as empty.
    #[error("cluster state {path} is empty")]
    Empty { path: PathBuf },
}

/// One load of the file, reduced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Items skipped as unusable (counted in the metric too, except items
    /// without a `kind`, which name no resource).
    pub skipped: usize,
}

/// Reads and parses the file once.
pub fn load(path: &Path, metrics: &ClusterMetrics) -> Result<State, StaticError> {
    let bytes = std::fs::read(path).map_err(|source| StaticError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &bytes, metrics)
}

/// Loads the file, publishes it, then reloads it whenever it changes, until
/// `shutdown` turns true (or its sender is gone).
///
/// Changes are found by polling: no inotify crate is in the tree, and
/// inotify would not make this simpler for the case that matters most, a
/// ConfigMap mount, where the file is a symlink through `..data` that the
/// kubelet swaps (a watch on the file stays on the old inode). Polling
/// `stat` on the path follows the links every time, and costs one `stat`
/// per `interval` while nothing changes. A changed file is loaded once
/// it reads the same on two consecutive polls, so a file caught mid-write
/// (`kubectl get … > file` truncates, then writes) is never loaded: a
/// change shows after one to two `interval`s.
pub async fn run(
    path: PathBuf,
    mut writer: IndexWriter,
    metrics: ClusterMetrics,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(path = %path.display(), ?interval, "static cluster source started");
    let path: Arc<Path> = path.into();
    let mut tracker = Tracker::default();
    loop {
        // stat, read and parse are blocking file work: off the runtime's workers.
        let (p, m) = (path.clone(), metrics.clone());
        let polled = tokio::task::spawn_blocking(move || {
            let mut t = tracker;
            let outcome = t.poll(&p, &m);
            (t, outcome)
        })
        .await;
        match polled {
            Ok((t, outcome)) => {
                tracker = t;
                match outcome {
                    None => {}
                    Some(Ok(state)) => {
                        let skipped = state.skipped;
                        publish(&mut writer, &metrics, state);
                        metrics.reloads.with_label_values(&["ok"]).inc();
                        tracing::info!(
                            path = %path.display(),
                            services = writer.service_count(),
                            endpoints = writer.endpoint_count(),
                            skipped,
                            "loaded cluster state"
                        );
                    }
                    Some(Err(error)) => {
                        metrics.reloads.with_label_values(&["error"]).inc();
                        tracing::error!(path = %path.display(), %error, "cluster state not loaded; keeping the previous index");
                    }
                }
            }
            // A panic in parsing is a bug; the tracker is unchanged, so the next poll retries.
            Err(error) => tracing::error!(path = %path.display(), %error, "polling the cluster state file failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    tracing::info!(path = %path.display(), "static cluster source stopped");
}

/// On file systems with coarse timestamps (1 s on ext3 and HFS+, 2 s on FAT)
/// a rewrite of the same length within one tick leaves `stat` unchanged, so
/// the content is hashed again until the file's mtime is this far behind the
/// last read. After that, any write moves the mtime and `stat` alone answers.
const MTIME_GRANULE: Duration = Duration::from_secs(2);

/// The `stat` fields that change when a file is rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().ok(),
        }
    }
}

/// What the file held when last looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Content with this hash (and length: hashing a slice hashes its length).
    Content(u64),
    /// The path could not be read; kept so the failure is reported once, not every poll.
    Unreadable(io::ErrorKind),
}

/// The polling state between two polls: small and `Copy`, so it moves in and
/// out of `spawn_blocking` without sharing.
#[derive(Clone, Copy, Debug)]
struct Tracker {
    /// The file state last acted on (loaded, or failed to load).
    seen: Option<Seen>,
    /// A change seen once, loaded if the next poll reads the same.
    pending: Option<Seen>,
    /// The `stat` of the file whose content was last read.
    id: Option<FileId>,
    /// Wall-clock time just before that read.
    read_at: SystemTime,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            seen: None,
            pending: None,
            id: None,
            read_at: SystemTime::UNIX_EPOCH,
        }
    }
}

impl Tracker {
    /// One poll: `None` if there is nothing to do, else the outcome of a load
    /// to publish or report.
    fn poll(&mut self, path: &Path, metrics: &ClusterMetrics) -> Option<Result<State, StaticError>> {
        let started = SystemTime::now();
        // Follows symlinks: a ConfigMap's `..data` swap shows as a new inode.
        let id = match std::fs::metadata(path) {
            Ok(meta) => FileId::of(&meta),
            Err(source) => return self.unreadable(path, source),
        };
        if !self.must_read(id) {
            return None;
        }
        // The id of what is actually read comes from the open file, not the earlier stat.
        let (id, bytes) = match read(path) {
            Ok(read) => read,
            Err(source) => return self.unreadable(path, source),
        };
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let seen = Seen::Content(hasher.finish());
        self.id = Some(id);
        self.read_at = started;
        if self.seen == Some(seen) {
            self.pending = None;
            return None;
        }
        // The first poll loads at once: there is no earlier state to protect.
        if self.seen.is_some() && self.pending != Some(seen) {
            tracing::debug!(path = %path.display(), "cluster state file changed; loading once it settles");
            self.pending = Some(seen);
            return None;
        }
        self.seen = Some(seen);
        self.pending = None;
        Some(parse(path, &bytes, metrics))
    }

    fn must_read(&self, id: FileId) -> bool {
        if self.pending.is_some() || self.id != Some(id) {
            return true;
        }
        match id.mtime {
            // An mtime after the last read (clock skew) counts as recent.
            Some(mtime) => self
                .read_at
                .duration_since(mtime)
                .map_or(true, |age| age < MTIME_GRANULE),
            None => true,
        }
    }

    fn unreadable(&mut self, path: &Path, source: io::Error) -> Option<Result<State, StaticError>> {
        let seen = Seen::Unreadable(source.kind());
        self.id = None;
        self.pending = None;
        if self.seen == Some(seen) {
            return None;
        }
        self.seen = Some(seen);
        Some(Err(StaticError::Read {
            path: path.into(),
            source,
        }))
    }
}

fn read(path: &Path) -> io::Result<(FileId, Vec<u8>)> {
    let mut file = File::open(path)?;
    let id = FileId::of(&file.metadata()?);
    let mut bytes = Vec::with_capacity(id.len as usize);
    file.read_to_end(&mut bytes)?;
    Ok((id, bytes))
}

/// Replaces the index with a loaded state and marks it synced: a complete
/// state, as far as this source knows.
pub fn publish(writer: &mut IndexWriter, metrics: &ClusterMetrics, state: State) {
    writer.replace_all(state.services, state.slices);
    metrics.published(writer);
    metrics.synced();
    writer.mark_synced();
}

/// Parses file contents already in memory (e.g. an embedded demo state);
/// `path` only names them in errors and logs.
pub fn parse(path: &Path, bytes: &[u8], metrics: &ClusterMetrics) -> Result<State, StaticError> {
    let docs = documents(path, bytes)?;
    if docs.is_empty() {
        return Err(StaticError::Empty { path: path.into() });
    }
    let mut state = State::default();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        match doc {
            Value::Array(items) => items.iter().for_each(|item| state.add(path, item, None, metrics)),
            Value::Object(ref map) => {
                let Some(kind) = map.get("kind").and_then(Value::as_str) else {
                    return Err(StaticError::NotAnObject {
                        path: path.into(),
                        document,
                    });
                };
                match kind.strip_suffix("List") {
                    // `List` (kubectl) has items of any kind; `ServiceList` (the API) omits theirs.
                    Some(element) => {
                        let Some(Value::Array(items)) = map.get("items") else {
                            return Err(StaticError::BadList {
                                path: path.into(),
                                document,
                                kind: kind.into(),
                            });
                        };
                        let default_kind = Some(element).filter(|k| !k.is_empty());
                        items
                            .iter()
                            .for_each(|item| state.add(path, item, default_kind, metrics));
                    }
                    None => state.add(path, &doc, None, metrics),
                }
            }
            _ => {
                return Err(StaticError::NotAnObject {
                    path: path.into(),
                    document,
                })
            }
        }
    }
    Ok(state)
}

/// The file's documents as JSON values, empty YAML documents left out.
fn documents(path: &Path, bytes: &[u8]) -> Result<Vec<Value>, StaticError> {
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let looks_like_json = matches!(text.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['));
    if looks_like_json {
        match serde_json::Deserializer::from_slice(text)
            .into_iter::<Value>()
            .collect()
        {
            Ok(docs) => return Ok(docs),
            // YAML flow style (`{kind: List, items: []}`) also starts with a brace; if it
            // is not that either, the JSON error is the one that helps.
            Err(source) => {
                return yaml_documents(text).map_err(|_| StaticError::Json {
                    path: path.into(),
                    source,
                })
            }
        }
    }
    yaml_documents(text).map_err(|source| StaticError::Yaml {
        path: path.into(),
        source,
    })
}

fn yaml_documents(text: &[u8]) -> Result<Vec<Value>, serde_yaml_ng::Error> {
    serde_yaml_ng::Deserializer::from_slice(text)
        .map(Value::deserialize)
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

impl State {
    /// Reduces one item into the state, or skips it with a warning.
    fn add(&mut self, path: &Path, item: &Value, default_kind: Option<&str>, metrics: &ClusterMetrics) {
        let kind = item.get("kind").and_then(Value::as_str).or(default_kind);
        let outcome = match kind {
            Some("Service") => ("services", reduce(item, Service::reduce).map(|s| self.services.push(s))),
            Some("EndpointSlice") => (
                "endpointslices",
                reduce(item, EndpointSlice::reduce).map(|s| self.slices.push(s)),
            ),
            Some(kind) => {
                tracing::debug!(path = %path.display(), kind, object = %ObjectName(item), "ignoring an object DNS does not use");
                return;
            }
            None => {
                self.skipped += 1;
                tracing::warn!(path = %path.display(), object = %ObjectName(item), "skipping an object without a kind");
                return;
            }
        };
        if let (resource, Err(reason)) = outcome {
            self.skipped += 1;
            metrics.skipped.with_label_values(&[resource]).inc();
            tracing::warn!(
                path = %path.display(),
                resource,
                object = %ObjectName(item),
                %reason,
                "skipping an object the cluster index cannot use"
            );
        }
    }
}

/// Deserializes an item into its Kubernetes type and reduces it; the full
/// object is dropped here.
fn reduce<'a, K, R, E>(item: &'a Value, reduce: impl FnOnce(&K) -> Result<R, E>) -> Result<R, String>
where
    K: Deserialize<'a>,
    E: std::fmt::Display,
{
    let object = K::deserialize(item).map_err(|e| e.to_string())?;
    reduce(&object).map_err(|e| e.to_string())
}

/// `namespace/name` of an item for logs, `?` for what is missing.
struct ObjectName<'a>(&'a Value);

impl std::fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = |name| self.0.pointer(name).and_then(Value::as_str).unwrap_or("?");
        write!(f, "{}/{}", field("/metadata/namespace"), field("/metadata/name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::index::{new_index, service_labels, IndexHandle};
    use crate::cluster::model::ServiceKind;
    use std::future::Future;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-cluster.yaml");

    fn metrics() -> ClusterMetrics {
        crate::metrics::Metrics::new(prometheus::Registry::new())
            .unwrap()
            .cluster
    }

    fn parse_str(text: &str) -> Result<State, StaticError> {
        parse(Path::new("test.yaml"), text.as_bytes(), &metrics())
    }

    fn service(state: &State, ns: &str, name: &str) -> Service {
        state
            .services
            .iter()
            .find(|s| &*s.namespace == ns && &*s.name == name)
            .unwrap()
            .clone()
    }

    #[test]
    fn loads_the_shipped_example() {
        let m = metrics();
        let state = load(Path::new(EXAMPLE), &m).unwrap();
        assert_eq!((state.services.len(), state.slices.len(), state.skipped), (7, 8, 0));
        assert_eq!(m.skipped.with_label_values(&["services"]).get(), 0);
        let web = service(&state, "shop", "web");
        let dual_stack = vec!["10.96.10.5".parse().unwrap(), "fd00:10:96::a05".parse().unwrap()];
        assert_eq!(web.kind, ServiceKind::ClusterIp(dual_stack.into()));
        assert_eq!(service(&state, "shop", "db").kind, ServiceKind::Headless);
        assert_eq!(
            service(&state, "shop", "payments").kind,
            ServiceKind::ExternalName("api.stripe.com".into())
        );
        assert!(service(&state, "shop", "cache-peers").publish_not_ready);
        assert_eq!(service(&state, "kube-system", "kube-dns").ports.len(), 3);
        assert_eq!(state.slices.iter().filter(|s| &*s.service == "db").count(), 2);

        let (mut writer, handle) = new_index();
        writer.replace_all(state.services, state.slices);
        // db: db-0 (v4 and v6) and db-1, not db-2; workers: the ready one only;
        // cache-peers: both (publishNotReadyAddresses).
        assert_eq!((writer.service_count(), writer.endpoint_count()), (7, 6));
        assert!(handle
            .load()
            .services
            .contains_key(&service_labels("default", "kubernetes")));
    }

    #[test]
    fn every_shape_gives_the_same_state() {
        let list = parse_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
        let value: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
        let items = value["items"].as_array().unwrap();

        let multi_doc: String = items
            .iter()
            .map(|i| format!("---\n# one object\n{}", serde_yaml_ng::to_string(i).unwrap()))
            .collect();
        let json_list = serde_json::to_string_pretty(&value).unwrap();
        let json_lines: String = items
            .iter()
            .map(|i| format!("{}\n", serde_json::to_string(i).unwrap()))
            .collect();
        let json_array = serde_json::to_string(items).unwrap();
        // What `kubectl get --raw` returns: typed lists whose items carry no kind.
        let typed = |kind: &str| {
            let items: Vec<Value> = items
                .iter()
                .filter(|i| i["kind"] == kind)
                .cloned()
                .map(|mut i| {
                    i.as_object_mut().unwrap().remove("kind");
                    i
                })
                .collect();
            serde_json::json!({"apiVersion": "v1", "kind": format!("{kind}List"), "items": items})
        };
        let typed_lists = format!(
            "{}\n---\n{}",
            serde_yaml_ng::to_string(&typed("Service")).unwrap(),
            serde_yaml_ng::to_string(&typed("EndpointSlice")).unwrap()
        );
        for (shape, text) in [
            ("multi-document YAML", &multi_doc),
            ("JSON List", &json_list),
            ("JSON lines", &json_lines),
            ("JSON array", &json_array),
            ("typed lists", &typed_lists),
        ] {
            assert_eq!(parse_str(text).unwrap(), list, "{shape}");
        }

        let single = serde_yaml_ng::to_string(&items[0]).unwrap();
        let one = parse_str(&single).unwrap();
        assert_eq!((one.services.len(), one.slices.len()), (1, 0));
        assert_eq!(one.services[0], list.services[0]);
    }

    #[test]
    fn bad_objects_are_skipped_and_counted() {
        let m = metrics();
        let text = r#"
kind: List
apiVersion: v1
items:
- {apiVersion: v1, kind: Service, metadata: {name: good, namespace: a}, spec: {clusterIP: 10.96.0.7}}
- {apiVersion: v1, kind: Service, metadata: {name: bad-ip, namespace: a}, spec: {clusterIP: nope}}
- {apiVersion: v1, kind: Service, metadata: {name: bad-type, namespace: a}, spec: {ports: 80}}
- {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: s, namespace: a}, addressType: IPv4, endpoints: []}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: cm, namespace: a}}
- {metadata: {name: kindless, namespace: a}}
"#;
        let state = parse(Path::new("t.yaml"), text.as_bytes(), &m).unwrap();
        assert_eq!(state.services.iter().map(|s| &*s.name).collect::<Vec<_>>(), ["good"]);
        assert!(state.slices.is_empty());
        assert_eq!(
            state.skipped, 4,
            "bad-ip, bad-type, the unlabelled slice, the kindless item; not the ConfigMap"
        );
        assert_eq!(m.skipped.with_label_values(&["services"]).get(), 2);
        assert_eq!(m.skipped.with_label_values(&["endpointslices"]).get(), 1);
    }

    #[test]
    fn an_unusable_file_is_an_error() {
        type Expected = fn(&StaticError) -> bool;
        let cases: [(&str, Expected); 7] = [
            ("kind: List\nitems: [\n", |e| matches!(e, StaticError::Yaml { .. })),
            (r#"{"kind": "List", "items": [}"#, |e| {
                matches!(e, StaticError::Json { .. })
            }),
            ("just some words\n", |e| {
                matches!(e, StaticError::NotAnObject { document: 1, .. })
            }),
            ("kind: Service\n---\nfoo: bar\n", |e| {
                matches!(e, StaticError::NotAnObject { document: 2, .. })
            }),
            ("kind: List\n", |e| matches!(e, StaticError::BadList { .. })),
            ("", |e| matches!(e, StaticError::Empty { .. })),
            ("# only a comment\n---\n", |e| matches!(e, StaticError::Empty { .. })),
        ];
        for (text, expected) in cases {
            let err = parse_str(text).unwrap_err();
            assert!(expected(&err), "{text:?}: {err}");
            assert!(err.to_string().contains("test.yaml"), "{err}");
        }
        let json = parse_str("{\n  \"kind\": \"List\",\n  \"items\": [,]\n}").unwrap_err();
        assert!(json.to_string().contains("line 3"), "JSON errors say where: {json}");
        let missing = load(Path::new("/nonexistent/cluster.yaml"), &metrics()).unwrap_err();
        assert!(
            matches!(missing, StaticError::Read { .. }) && missing.to_string().contains("/nonexistent/cluster.yaml")
        );
        // A List with no items is an empty cluster, not an error.
        assert_eq!(
            parse_str("apiVersion: v1\nkind: List\nitems: []\n").unwrap(),
            State::default()
        );
    }

    #[test]
    fn stat_alone_answers_once_the_mtime_is_old() {
        let now = SystemTime::now();
        let id = FileId {
            dev: 1,
            ino: 2,
            len: 3,
            mtime: Some(now - Duration::from_secs(60)),
        };
        let t = Tracker {
            seen: Some(Seen::Content(7)),
            pending: None,
            id: Some(id),
            read_at: now,
        };
        assert!(!t.must_read(id));
        assert!(t.must_read(FileId { ino: 9, ..id }), "replaced by rename");
        assert!(t.must_read(FileId { len: 4, ..id }));
        assert!(
            t.must_read(FileId {
                mtime: Some(now - Duration::from_millis(500)),
                ..id
            }),
            "same granule"
        );
        assert!(Tracker {
            id: Some(FileId { mtime: Some(now), ..id }),
            ..t
        }
        .must_read(FileId { mtime: Some(now), ..id }));
        assert!(Tracker {
            pending: Some(Seen::Content(8)),
            ..t
        }
        .must_read(id));
    }

    fn svc_yaml(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{clusterIP: {ip}}}\n"
        )
    }

    /// Waits for a condition the source reaches by itself.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn has(handle: &IndexHandle, name: &str) -> bool {
        handle.load().services.contains_key(&service_labels("demo", name))
    }

    fn start(
        path: &Path,
        m: &ClusterMetrics,
    ) -> (
        IndexHandle,
        watch::Sender<bool>,
        impl Future<Output = Result<(), tokio::task::JoinError>>,
    ) {
        let (writer, handle) = new_index();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(path.into(), writer, m.clone(), Duration::from_millis(20), stopped));
        (handle, stop, task)
    }

    #[tokio::test]
    async fn run_follows_the_file_and_keeps_the_index_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, svc_yaml("alpha", "10.96.0.1")).unwrap();
        let m = metrics();
        let (handle, stop, task) = start(&path, &m);

        until("the first load", || handle.is_synced() && has(&handle, "alpha")).await;
        assert_eq!(m.reloads.with_label_values(&["ok"]).get(), 1);
        assert_eq!(m.services.get(), 1);
        assert!(m.last_sync.get() > 0.0);

        // Same length, same inode, mtime put back: only the content hash can see it.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, svc_yaml("bravo", "10.96.0.2")).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        until("the rewrite", || has(&handle, "bravo") && !has(&handle, "alpha")).await;

        let version = handle.load().version;
        std::fs::write(&path, "kind: List\nitems: [\n").unwrap();
        until("the failed reload", || {
            m.reloads.with_label_values(&["error"]).get() == 1
        })
        .await;
        assert!(has(&handle, "bravo") && handle.is_synced());
        assert_eq!(handle.load().version, version, "nothing published");

        // Replaced by rename, as editors and `kubectl … > tmp && mv` do.
        let tmp = dir.path().join("cluster.yaml.tmp");
        std::fs::write(&tmp, svc_yaml("charlie", "10.96.0.3")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        until("the renamed file", || has(&handle, "charlie")).await;
        assert_eq!(m.reloads.with_label_values(&["ok"]).get(), 3);

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn run_follows_a_configmap_symlink_swap() {
        // The kubelet's layout: cluster.yaml -> ..data/cluster.yaml, ..data -> ..<timestamp>/,
        // updated by pointing a new ..data_tmp at a new directory and renaming it over ..data.
        let dir = tempfile::tempdir().unwrap();
        let version = |n: u32, yaml: String| {
            let d = dir.path().join(format!("..2025_03_05_14_02_1{n}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cluster.yaml"), yaml).unwrap();
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(d.file_name().unwrap(), &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        };
        version(0, svc_yaml("alpha", "10.96.0.1"));
        let path = dir.path().join("cluster.yaml");
        std::os::unix::fs::symlink("..data/cluster.yaml", &path).unwrap();
        let m = metrics();
        let (handle, stop, task) = start(&path, &m);

        until("the first load", || has(&handle, "alpha")).await;
        version(1, svc_yaml("bravo", "10.96.0.2"));
        until("the swapped file", || has(&handle, "bravo") && !has(&handle, "alpha")).await;

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn run_without_a_file_stays_unsynced_until_one_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        let m = metrics();
        let (handle, stop, task) = start(&path, &m);

        until("the failed load", || m.reloads.with_label_values(&["error"]).get() == 1).await;
        // Several polls pass; the same failure is reported once, not every poll.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.reloads.with_label_values(&["error"]).get(), 1);
        assert!(!handle.is_synced());

        std::fs::write(&path, svc_yaml("alpha", "10.96.0.1")).unwrap();
        until("the first load", || handle.is_synced() && has(&handle, "alpha")).await;

        // The sender going away stops the source too.
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
