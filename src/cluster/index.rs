//! The cluster index: what the cluster zone answers from.
//!
//! Owns: the reduced objects (the writer's side) and the lookup tables
//! derived from them (the readers' side). One `IndexWriter` (the source's
//! task) applies changes; after each batch it publishes an immutable
//! `Snapshot` through an `ArcSwap`, so queries read a consistent snapshot
//! with one atomic load and never wait for a writer. The tables are
//! persistent maps (imbl): publishing shares structure with the previous
//! snapshot, so a change costs O(log n), not a rebuild of the cluster.
//! Must not: do I/O, or be touched by a query except through `Snapshot`.
//!
//! Names are keyed by their lowercased wire labels, which is what the
//! authority has in hand for a query: `<svc>.<ns>` is `\x03svc\x02ns`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::model::{Change, EndpointSlice, Port, Service, ServiceKind};

/// Wire labels of a name without the root, lowercased: `\x03svc\x02ns`.
pub type Labels = Box<[u8]>;

/// A namespaced object's key: (namespace, name).
type ObjectKey = (Box<str>, Box<str>);

/// What DNS serves for one Service, merged from the Service and its slices.
#[derive(Debug, PartialEq, Eq)]
pub struct ServiceRecords {
    pub kind: RecordKind,
    /// Named ports for SRV, as `_<name>` and `_<proto>` labels.
    pub ports: Box<[SrvPort]>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecordKind {
    ClusterIp(Box<[IpAddr]>),
    /// The endpoints DNS publishes (ready ones, or all with publishNotReadyAddresses),
    /// deduplicated by address.
    Headless(Box<[EndpointRecord]>),
    /// Target in wire format (uncompressed, with the root label).
    ExternalName(Box<[u8]>),
}

/// One published endpoint: its name and every address it has (an endpoint
/// of a dual-stack service appears in an IPv4 and an IPv6 slice).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct EndpointRecord {
    pub ips: Box<[IpAddr]>,
    /// The first label of the endpoint's own name: its hostname, or its
    /// address with dashes (`10-1-0-7`), as CoreDNS names endpoints without one.
    pub label: Box<[u8]>,
    pub has_hostname: bool,
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct SrvPort {
    /// `_http` (wire label: length byte included) and `_tcp`.
    pub name: Box<[u8]>,
    pub proto: Box<[u8]>,
    pub port: u16,
}

/// A consistent view of the index for one query.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: imbl::HashMap<Labels, Arc<ServiceRecords>>,
    /// Services per namespace label (`\x02ns`), so `<ns>.svc.Z` can be told from a name that does not exist.
    pub namespaces: imbl::HashMap<Labels, u32>,
    /// PTR targets by address: wire names with the root label, relative to nothing (full).
    pub ptr: imbl::HashMap<IpAddr, Arc<[PtrTarget]>>,
    /// Bumped by every published change; the hub's versions start here.
    pub version: u64,
    /// Endpoint addresses published (an endpoint with two families counts twice).
    pub endpoint_count: usize,
}

/// One PTR target: the owning service's labels and the first label of the
/// endpoint name (empty for a ClusterIP address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtrTarget {
    pub service: Labels,
    pub endpoint: Box<[u8]>,
    pub headless: bool,
}

/// The readers' handle: cheap to clone, one atomic load per query.
#[derive(Clone, Debug)]
pub struct IndexHandle {
    current: Arc<ArcSwap<Snapshot>>,
    /// Read per query: an atomic, not the watch below, so the hot path takes no lock.
    synced: Arc<AtomicBool>,
    synced_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl IndexHandle {
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }
    /// True once a source delivered a complete state (DESIGN §4: /readyz and fallback).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
    /// Resolves once the index has synced.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced_tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The change feed's callback: `(version, changes)` after every publish.
pub type FeedFn = Box<dyn FnMut(u64, &[Change]) + Send>;

/// The optional change feed (the hub's input): what each publish changed in
/// the object state. Off (`None`) on node agents, which pay nothing for it.
#[derive(Default)]
struct Feed {
    callback: Option<FeedFn>,
    /// The changes of the publish in progress.
    pending: Vec<Change>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("on", &self.callback.is_some()).finish()
    }
}

/// The one writer: owns the reduced objects, derives and publishes snapshots.
#[derive(Debug)]
pub struct IndexWriter {
    handle: IndexHandle,
    services: HashMap<ObjectKey, Service>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    /// Slice names by owning service, to merge them.
    slices_of: HashMap<ObjectKey, HashSet<Box<str>>>,
    snapshot: Snapshot,
    feed: Feed,
}

/// Creates an empty index: the writer for the source, the handle for queries.
pub fn new_index() -> (IndexWriter, IndexHandle) {
    let handle = IndexHandle {
        current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
        synced: Arc::new(AtomicBool::new(false)),
        synced_tx: Arc::new(tokio::sync::watch::channel(false).0),
    };
    let writer = IndexWriter {
        handle: handle.clone(),
        services: HashMap::new(),
        slices: HashMap::new(),
        slices_of: HashMap::new(),
        snapshot: Snapshot::default(),
        feed: Feed::default(),
    };
    (writer, handle)
}

/// `<svc>.<ns>` as lowercased wire labels.
pub fn service_labels(namespace: &str, name: &str) -> Labels {
    let mut v = Vec::with_capacity(namespace.len() + name.len() + 2);
    push_label(&mut v, name);
    push_label(&mut v, namespace);
    v.into()
}

fn push_label(v: &mut Vec<u8>, label: &str) {
    // Kubernetes names are DNS-1123 labels (≤ 63, ASCII); clamp defensively.
    let b = &label.as_bytes()[..label.len().min(63)];
    v.push(b.len() as u8);
    v.extend(b.iter().map(u8::to_ascii_lowercase));
}

fn label(s: &str) -> Box<[u8]> {
    let mut v = Vec::with_capacity(s.len() + 1);
    push_label(&mut v, s);
    v.into()
}

/// An address as a DNS label: `10-1-0-7`, or for IPv6 the full form with
/// dashes (`fd00-0-0-0-0-0-0-5`), as CoreDNS writes endpoint names.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().map(|o| o.to_string()).join("-"),
        IpAddr::V6(v6) => v6.segments().map(|s| format!("{s:x}")).join("-"),
    }
}

fn srv_ports(ports: &[Port]) -> Vec<SrvPort> {
    ports
        .iter()
        .map(|p| SrvPort {
            name: label(&format!("_{}", p.name)),
            proto: label(p.protocol.label()),
            port: p.port,
        })
        .collect()
}

impl IndexWriter {
    pub fn handle(&self) -> IndexHandle {
        self.handle.clone()
    }

    /// Turns on the change feed: after every publish, `callback` gets the new
    /// version and the changes that altered the object state, in order (an
    /// upsert of an identical object and a delete of a missing one are left
    /// out; a `replace_all` arrives as its diff). Applied in order to an
    /// empty state from the version of this call, they rebuild the writer's
    /// objects: the first call, made here, carries the current objects as
    /// upserts. Runs on the writer's task: it must be quick and not block.
    pub fn set_feed(&mut self, mut callback: FeedFn) {
        let mut current: Vec<Change> = self.services.values().cloned().map(Change::UpsertService).collect();
        current.extend(self.slices.values().cloned().map(Change::UpsertSlice));
        callback(self.snapshot.version, &current);
        self.feed = Feed {
            callback: Some(callback),
            pending: Vec::new(),
        };
    }

    /// Applies one change and publishes.
    pub fn apply(&mut self, change: Change) {
        self.apply_batch(std::iter::once(change));
    }

    /// Applies changes in order and publishes once.
    pub fn apply_batch(&mut self, changes: impl IntoIterator<Item = Change>) {
        let mut touched = HashSet::new();
        for change in changes {
            touched.insert(self.record(change));
        }
        for key in touched {
            self.rederive(&key);
        }
        self.publish();
    }

    /// Replaces the whole state (an initial list, a relist, a reloaded file)
    /// and publishes once: names present before and after never disappear in
    /// between (no NXDOMAIN window during a relist).
    pub fn replace_all(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        let mut touched: HashSet<ObjectKey> = self.services.keys().cloned().collect();
        touched.extend(self.slices_of.keys().cloned());
        let old_services = std::mem::take(&mut self.services);
        let old_slices = std::mem::take(&mut self.slices);
        self.slices_of.clear();
        for s in services {
            touched.insert(self.record(Change::UpsertService(s)));
        }
        for s in slices {
            touched.insert(self.record(Change::UpsertSlice(s)));
        }
        if self.feed.callback.is_some() {
            // `record` saw empty maps and queued every object: keep only the diff.
            let unchanged = |c: &Change| match c {
                Change::UpsertService(s) => old_services.get(&(s.namespace.clone(), s.name.clone())) == Some(s),
                Change::UpsertSlice(s) => old_slices.get(&(s.namespace.clone(), s.name.clone())) == Some(s),
                _ => false,
            };
            self.feed.pending.retain(|c| !unchanged(c));
            let gone_services = old_services.into_keys().filter(|k| !self.services.contains_key(k));
            let gone_slices = old_slices.into_keys().filter(|k| !self.slices.contains_key(k));
            let deletes: Vec<Change> = gone_services
                .map(|(namespace, name)| Change::DeleteService { namespace, name })
                .chain(gone_slices.map(|(namespace, name)| Change::DeleteSlice { namespace, name }))
                .collect();
            self.feed.pending.extend(deletes);
        }
        for key in touched {
            self.rederive(&key);
        }
        self.publish();
    }

    /// Marks the index complete: a source delivered its first full state.
    pub fn mark_synced(&self) {
        self.handle.synced.store(true, Ordering::Release);
        self.handle.synced_tx.send_replace(true);
    }

    pub fn service_count(&self) -> usize {
        self.snapshot.services.len()
    }

    pub fn endpoint_count(&self) -> usize {
        self.snapshot.endpoint_count
    }

    /// Stores a change in the object state; returns the service it touches.
    fn record(&mut self, change: Change) -> ObjectKey {
        if self.feed.callback.is_some() && self.alters(&change) {
            self.feed.pending.push(change.clone());
        }
        match change {
            Change::UpsertService(s) => {
                let key = (s.namespace.clone(), s.name.clone());
                self.services.insert(key.clone(), s);
                key
            }
            Change::DeleteService { namespace, name } => {
                let key = (namespace, name);
                self.services.remove(&key);
                key
            }
            Change::UpsertSlice(s) => {
                let slice_key = (s.namespace.clone(), s.name.clone());
                let owner = (s.namespace.clone(), s.service.clone());
                // A slice can be relabelled to another service: unlink it from the old one.
                if let Some(old) = self.slices.get(&slice_key) {
                    let old_owner = (old.namespace.clone(), old.service.clone());
                    if old_owner != owner {
                        self.unlink(&old_owner, &slice_key.1);
                        self.rederive(&old_owner);
                    }
                }
                self.slices_of.entry(owner.clone()).or_default().insert(s.name.clone());
                self.slices.insert(slice_key, s);
                owner
            }
            Change::DeleteSlice { namespace, name } => {
                let slice_key = (namespace, name);
                match self.slices.remove(&slice_key) {
                    Some(old) => {
                        let owner = (old.namespace, old.service);
                        self.unlink(&owner, &slice_key.1);
                        owner
                    }
                    None => slice_key,
                }
            }
        }
    }

    /// Whether a change would alter the object state (the feed reports only those).
    fn alters(&self, change: &Change) -> bool {
        let key = |ns: &str, name: &str| (Box::<str>::from(ns), Box::<str>::from(name));
        match change {
            Change::UpsertService(s) => self.services.get(&key(&s.namespace, &s.name)) != Some(s),
            Change::DeleteService { namespace, name } => self.services.contains_key(&key(namespace, name)),
            Change::UpsertSlice(s) => self.slices.get(&key(&s.namespace, &s.name)) != Some(s),
            Change::DeleteSlice { namespace, name } => self.slices.contains_key(&key(namespace, name)),
        }
    }

    fn unlink(&mut self, owner: &ObjectKey, slice: &str) {
        if let Some(set) = self.slices_of.get_mut(owner) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(owner);
            }
        }
    }

    /// Recomputes the records of one service into the working snapshot.
    fn rederive(&mut self, key: &ObjectKey) {
        let labels = service_labels(&key.0, &key.1);
        let old = self.snapshot.services.get(&labels).cloned();
        let new = self.services.get(key).map(|svc| Arc::new(self.derive(svc)));
        if old.as_deref() == new.as_deref() {
            return;
        }
        if let Some(old) = &old {
            self.unindex(&labels, old);
        }
        match new {
            Some(new) => {
                self.index(&labels, &new);
                self.snapshot.services.insert(labels, new);
            }
            None => {
                self.snapshot.services.remove(&labels);
            }
        }
        let ns = label(&key.0);
        let count = self.snapshot.namespaces.get(&ns).copied().unwrap_or(0);
        let count =
            count + self.snapshot.services.contains_key(&service_labels(&key.0, &key.1)) as u32 - old.is_some() as u32;
        if count == 0 {
            self.snapshot.namespaces.remove(&ns);
        } else {
            self.snapshot.namespaces.insert(ns, count);
        }
    }

    fn derive(&self, svc: &Service) -> ServiceRecords {
        let key = (svc.namespace.clone(), svc.name.clone());
        let slices: Vec<&EndpointSlice> = self
            .slices_of
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(svc.namespace.clone(), name.clone())))
            .collect();
        match &svc.kind {
            ServiceKind::ClusterIp(ips) => ServiceRecords {
                kind: RecordKind::ClusterIp(ips.clone()),
                ports: srv_ports(&svc.ports).into(),
            },
            ServiceKind::ExternalName(target) => {
                let mut wire = Vec::with_capacity(target.len() + 2);
                for l in target.split('.').filter(|l| !l.is_empty()) {
                    push_label(&mut wire, l);
                }
                wire.push(0);
                ServiceRecords {
                    kind: RecordKind::ExternalName(wire.into()),
                    ports: Box::new([]),
                }
            }
            ServiceKind::Headless => {
                let mut seen = HashSet::new();
                // Grouped by name: index into `endpoints` by label.
                let mut by_label: HashMap<Box<[u8]>, usize> = HashMap::new();
                let mut endpoints: Vec<(Box<[u8]>, Vec<IpAddr>, bool)> = Vec::new();
                let mut ports: Vec<SrvPort> = Vec::new();
                // Slices in name order, so the merged list is the same whatever the arrival order.
                let mut slices = slices;
                slices.sort_by(|a, b| a.name.cmp(&b.name));
                for slice in slices {
                    for p in srv_ports(&slice.ports) {
                        if !ports.contains(&p) {
                            ports.push(p);
                        }
                    }
                    for e in slice.endpoints.iter() {
                        if e.terminating || !(e.ready || svc.publish_not_ready) {
                            continue;
                        }
                        for &ip in e.addresses.iter() {
                            if !seen.insert(ip) {
                                continue;
                            }
                            let (l, has_hostname) = match &e.hostname {
                                Some(h) => (label(h), true),
                                None => (label(&dashed(ip)), false),
                            };
                            match by_label.get(&l) {
                                Some(&i) => endpoints[i].1.push(ip),
                                None => {
                                    by_label.insert(l.clone(), endpoints.len());
                                    endpoints.push((l, vec![ip], has_hostname));
                                }
                            }
                        }
                    }
                }
                let endpoints = endpoints
                    .into_iter()
                    .map(|(label, ips, has_hostname)| EndpointRecord {
                        ips: ips.into(),
                        label,
                        has_hostname,
                    })
                    .collect();
                ServiceRecords {
                    kind: RecordKind::Headless(endpoints),
                    ports: ports.into(),
                }
            }
        }
    }

    fn ptr_targets(labels: &Labels, records: &ServiceRecords) -> Vec<(IpAddr, PtrTarget)> {
        match &records.kind {
            RecordKind::ClusterIp(ips) => ips
                .iter()
                .map(|&ip| {
                    (
                        ip,
                        PtrTarget {
                            service: labels.clone(),
                            endpoint: Box::new([]),
                            headless: false,
                        },
                    )
                })
                .collect(),
            RecordKind::Headless(eps) => eps
                .iter()
                .flat_map(|e| {
                    e.ips.iter().map(|&ip| {
                        (
                            ip,
                            PtrTarget {
                                service: labels.clone(),
                                endpoint: e.label.clone(),
                                headless: true,
                            },
                        )
                    })
                })
                .collect(),
            RecordKind::ExternalName(_) => Vec::new(),
        }
    }

    fn index(&mut self, labels: &Labels, records: &ServiceRecords) {
        if let RecordKind::Headless(eps) = &records.kind {
            self.snapshot.endpoint_count += eps.iter().map(|e| e.ips.len()).sum::<usize>();
        }
        for (ip, target) in Self::ptr_targets(labels, records) {
            let mut list: Vec<PtrTarget> = self.snapshot.ptr.get(&ip).map(|l| l.to_vec()).unwrap_or_default();
            list.push(target);
            self.snapshot.ptr.insert(ip, list.into());
        }
    }

    fn unindex(&mut self, labels: &Labels, records: &ServiceRecords) {
        if let RecordKind::Headless(eps) = &records.kind {
            self.snapshot.endpoint_count -= eps.iter().map(|e| e.ips.len()).sum::<usize>();
        }
        for (ip, target) in Self::ptr_targets(labels, records) {
            let Some(list) = self.snapshot.ptr.get(&ip) else {
                continue;
            };
            let rest: Vec<PtrTarget> = list.iter().filter(|t| **t != target).cloned().collect();
            if rest.is_empty() {
                self.snapshot.ptr.remove(&ip);
            } else {
                self.snapshot.ptr.insert(ip, rest.into());
            }
        }
    }

    fn publish(&mut self) {
        self.snapshot.version += 1;
        self.handle.current.store(Arc::new(self.snapshot.clone()));
        if let Some(callback) = &mut self.feed.callback {
            let changes = std::mem::take(&mut self.feed.pending);
            callback(self.snapshot.version, &changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::{Endpoint, Protocol};

    fn svc(ns: &str, name: &str, kind: ServiceKind) -> Service {
        Service {
            namespace: ns.into(),
            name: name.into(),
            kind,
            ports: vec![Port {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
            }]
            .into(),
            publish_not_ready: false,
        }
    }

    fn slice(ns: &str, name: &str, service: &str, eps: &[(&str, Option<&str>, bool)]) -> EndpointSlice {
        EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: service.into(),
            ports: vec![Port {
                name: "pg".into(),
                protocol: Protocol::Tcp,
                port: 5432,
            }]
            .into(),
            endpoints: eps
                .iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.parse().unwrap()].into(),
                    hostname: host.map(Into::into),
                    ready: *ready,
                    terminating: false,
                })
                .collect(),
        }
    }

    #[test]
    fn merges_slices_and_follows_changes() {
        let (mut w, h) = new_index();
        w.apply_batch([
            Change::UpsertService(svc("shop", "db", ServiceKind::Headless)),
            Change::UpsertSlice(slice(
                "shop",
                "db-a",
                "db",
                &[("10.1.0.1", Some("db-0"), true), ("10.1.0.2", None, false)],
            )),
            Change::UpsertSlice(slice(
                "shop",
                "db-b",
                "db",
                &[("10.1.0.1", Some("db-0"), true), ("10.1.0.3", None, true)],
            )),
        ]);
        let snap = h.load();
        let db = snap.services.get(&service_labels("shop", "db")).unwrap();
        let RecordKind::Headless(eps) = &db.kind else { panic!() };
        assert_eq!(
            eps.iter().map(|e| e.ips[0].to_string()).collect::<Vec<_>>(),
            ["10.1.0.1", "10.1.0.3"]
        );
        assert_eq!(&*eps[1].label, b"\x0810-1-0-3");
        assert_eq!(snap.namespaces.get(&label("shop")[..]), Some(&1));
        assert_eq!(snap.ptr.get(&"10.1.0.3".parse::<IpAddr>().unwrap()).unwrap().len(), 1);
        assert_eq!(snap.endpoint_count, 2);

        w.apply(Change::DeleteSlice {
            namespace: "shop".into(),
            name: "db-b".into(),
        });
        let snap = h.load();
        assert!(!snap.ptr.contains_key(&"10.1.0.3".parse::<IpAddr>().unwrap()));
        assert_eq!(snap.endpoint_count, 1);

        w.apply(Change::DeleteService {
            namespace: "shop".into(),
            name: "db".into(),
        });
        let snap = h.load();
        assert!(snap.services.is_empty() && snap.namespaces.is_empty() && snap.ptr.is_empty());
        assert_eq!(snap.endpoint_count, 0);
    }

    #[test]
    fn the_feed_reports_what_each_publish_changed() {
        type Log = Arc<std::sync::Mutex<Vec<(u64, Vec<Change>)>>>;
        let (mut w, h) = new_index();
        let ip = |a: &str| ServiceKind::ClusterIp(vec![a.parse().unwrap()].into());
        w.apply(Change::UpsertService(svc("a", "before", ip("10.96.0.1"))));
        let log: Log = Default::default();
        let sink = log.clone();
        w.set_feed(Box::new(move |v, c| sink.lock().unwrap().push((v, c.to_vec()))));
        let db = slice("a", "db-1", "db", &[("10.1.0.1", None, true)]);
        w.apply_batch([
            Change::UpsertService(svc("a", "db", ServiceKind::Headless)),
            Change::UpsertSlice(db.clone()),
            Change::UpsertService(svc("a", "before", ip("10.96.0.1"))),
            Change::DeleteSlice {
                namespace: "a".into(),
                name: "missing".into(),
            },
        ]);
        w.apply(Change::UpsertSlice(db.clone()));
        w.replace_all(
            vec![svc("a", "db", ServiceKind::Headless), svc("b", "new", ip("10.96.0.2"))],
            vec![slice("a", "db-1", "db", &[("10.1.0.2", None, true)])],
        );
        let log = log.lock().unwrap().clone();
        let count = |i: usize| log[i].1.len();
        assert_eq!(log.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(count(0), 1, "the first call carries the current objects");
        assert_eq!(count(1), 2, "the identical upsert and the missing delete are left out");
        assert_eq!(count(2), 0, "an identical upsert: a publish with no change");
        assert_eq!(count(3), 3, "the relist's diff: changed slice, new service, delete");
        assert!(log[3].1.contains(&Change::DeleteService {
            namespace: "a".into(),
            name: "before".into()
        }));

        // Replayed into an empty index, the feed rebuilds the same tables.
        let (mut copy, ch) = new_index();
        for (_, changes) in log {
            copy.apply_batch(changes);
        }
        let (a, b) = (h.load(), ch.load());
        assert_eq!(a.services, b.services);
        assert_eq!(a.ptr, b.ptr);
        assert_eq!(a.namespaces, b.namespaces);
    }

    #[test]
    fn replace_all_keeps_names_that_stay() {
        let (mut w, h) = new_index();
        let ip = ServiceKind::ClusterIp(vec!["10.96.0.1".parse().unwrap()].into());
        w.replace_all(
            vec![svc("default", "kubernetes", ip.clone()), svc("a", "gone", ip.clone())],
            vec![],
        );
        let before = h.load().version;
        w.replace_all(vec![svc("default", "kubernetes", ip)], vec![]);
        let snap = h.load();
        assert_eq!(snap.version, before + 1, "one publish for the whole relist");
        assert!(snap.services.contains_key(&service_labels("default", "kubernetes")[..]));
        assert!(!snap.services.contains_key(&service_labels("a", "gone")[..]));
        assert!(!snap.namespaces.contains_key(&label("a")[..]));
    }
}
