//! The `kubernetes` source against the fake API server (support::kube_api),
//! through a real `kube::Client`: the initial list, events, relist on 410
//! Gone without a gap, resuming after a dropped connection, bookmarks, and
//! the backoff on 429/5xx. Tests observe the index through its handle and
//! poll for convergence with timeouts.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodens::cluster::index::{new_index, service_labels, IndexHandle, RecordKind};
use nodens::cluster::source::kubernetes;
use nodens::metrics::{ClusterMetrics, Metrics};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::kube_api::{
    endpoint_slice, external_name_service, headless_service, service, FakeKubeApi, Resource, Verb,
};
use crate::support::server::holds_within as eventually;

const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// The source running against a fake API server.
struct Harness {
    api: FakeKubeApi,
    index: IndexHandle,
    metrics: ClusterMetrics,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start(objects: Vec<serde_json::Value>) -> Harness {
        let api = FakeKubeApi::start(objects).await;
        let client = api.client();
        Harness::run(api, client)
    }

    fn run(api: FakeKubeApi, client: kube::Client) -> Harness {
        let (writer, index) = new_index();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap().cluster;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(kubernetes::run(client, writer, metrics.clone(), stopped));
        Harness {
            api,
            index,
            metrics,
            stop,
            task,
        }
    }

    async fn synced(&self) {
        assert!(
            eventually(SYNC_TIMEOUT, || self.index.is_synced()).await,
            "the index never synced"
        );
    }

    fn has(&self, ns: &str, name: &str) -> bool {
        has(&self.index, ns, name)
    }

    /// The ClusterIP addresses, or the headless endpoint addresses, of a service.
    fn ips(&self, ns: &str, name: &str) -> Option<Vec<IpAddr>> {
        ips(&self.index, ns, name)
    }

    fn restarts(&self, resource: &str) -> u64 {
        self.metrics.watch_restarts.with_label_values(&[resource]).get()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the source stops on shutdown")
            .expect("the source task does not panic");
    }
}

fn has(index: &IndexHandle, ns: &str, name: &str) -> bool {
    index.load().services.contains_key(&service_labels(ns, name)[..])
}

fn ips(index: &IndexHandle, ns: &str, name: &str) -> Option<Vec<IpAddr>> {
    let snap = index.load();
    let records = snap.services.get(&service_labels(ns, name)[..])?;
    Some(match &records.kind {
        RecordKind::ClusterIp(ips) => ips.to_vec(),
        RecordKind::Headless(eps) => eps.iter().flat_map(|e| e.ips.iter().copied()).collect(),
        RecordKind::ExternalName(_) => Vec::new(),
    })
}

fn addrs(list: &[&str]) -> Option<Vec<IpAddr>> {
    Some(list.iter().map(|a| a.parse().unwrap()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_syncs_services_and_merged_slices() {
    let mut bad = service("shop", "broken", &["10.96.0.9"]);
    bad["spec"]["clusterIP"] = json!("not-an-ip");
    bad["spec"]["clusterIPs"] = json!(["not-an-ip"]);
    let h = Harness::start(vec![
        service("default", "kubernetes", &["10.96.0.1"]),
        service("shop", "web", &["10.96.0.5", "fd00::5"]),
        external_name_service("shop", "ext", "api.example.com"),
        headless_service("shop", "db"),
        endpoint_slice("shop", "db-a", "db", &["10.1.0.1", "10.1.0.2"]),
        endpoint_slice("shop", "db-b", "db", &["10.1.0.2", "10.1.0.3"]),
        bad,
    ])
    .await;
    h.synced().await;

    assert_eq!(h.ips("default", "kubernetes"), addrs(&["10.96.0.1"]));
    assert_eq!(h.ips("shop", "web"), addrs(&["10.96.0.5", "fd00::5"]), "dual-stack");
    assert!(h.has("shop", "ext"));
    assert_eq!(
        h.ips("shop", "db"),
        addrs(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        "two slices merged, deduplicated"
    );
    assert!(!h.has("shop", "broken"));
    assert_eq!(h.metrics.skipped.with_label_values(&["services"]).get(), 1);
    assert_eq!(h.metrics.services.get(), 4);
    assert_eq!(h.metrics.endpoints.get(), 3);
    assert!(h.metrics.last_sync.get() > 0.0);
    assert_eq!((h.restarts("services"), h.restarts("endpointslices")), (0, 0));

    // What kube asked for: paged lists, then watches with bookmarks from the list's version.
    for r in Resource::ALL {
        let lists = h.api.requests_of(r, Some(Verb::List));
        assert_eq!(lists.len(), 1, "{r:?}: one page");
        assert_eq!(lists[0].param("limit"), Some("500"));
        assert!(eventually(SYNC_TIMEOUT, || h.api.watch_requests(r) >= 1).await);
        let w = &h.api.requests_of(r, Some(Verb::Watch))[0];
        assert_eq!(w.param("allowWatchBookmarks"), Some("true"));
        assert_eq!(
            w.param("resourceVersion"),
            Some(h.api.resource_version().to_string().as_str())
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_is_paged() {
    let objects = (0..1201)
        .map(|i| service("bulk", &format!("s{i:04}"), &["10.96.1.1"]))
        .collect();
    let h = Harness::start(objects).await;
    h.synced().await;
    assert_eq!(h.index.load().services.len(), 1201);
    let pages = h.api.requests_of(Resource::Services, Some(Verb::List));
    assert_eq!(pages.len(), 3, "500 + 500 + 201");
    assert_eq!(pages[0].param("continue"), None);
    assert!(pages[1].param("continue").is_some() && pages[2].param("continue").is_some());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_synced_until_both_resources_listed() {
    let api = FakeKubeApi::start(vec![service("a", "one", &["10.96.0.1"])]).await;
    api.fail_next_on(Resource::EndpointSlices, 1000, 500, None);
    let client = api.client();
    let h = Harness::run(api, client);
    assert!(eventually(SYNC_TIMEOUT, || h.has("a", "one")).await, "services listed");
    assert!(eventually(SYNC_TIMEOUT, || h.api.total_requests(Resource::EndpointSlices) >= 1).await);
    assert!(!h.index.is_synced(), "slices not listed yet");
    h.api.clear_faults();
    h.synced().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_follows_create_update_delete() {
    let h = Harness::start(vec![headless_service("shop", "db")]).await;
    h.synced().await;
    let watching = || Resource::ALL.into_iter().all(|r| h.api.open_watches(r) == 1);
    assert!(eventually(SYNC_TIMEOUT, watching).await);

    h.api.create(service("shop", "web", &["10.96.0.5"]));
    assert!(
        eventually(SYNC_TIMEOUT, || h.ips("shop", "web") == addrs(&["10.96.0.5"])).await,
        "created"
    );
    h.api.update(service("shop", "web", &["10.96.0.6"]));
    assert!(
        eventually(SYNC_TIMEOUT, || h.ips("shop", "web") == addrs(&["10.96.0.6"])).await,
        "updated"
    );
    h.api.delete(Resource::Services, "shop", "web");
    assert!(eventually(SYNC_TIMEOUT, || !h.has("shop", "web")).await, "deleted");

    h.api.create(endpoint_slice("shop", "db-a", "db", &["10.1.0.1"]));
    h.api.create(endpoint_slice("shop", "db-b", "db", &["10.1.0.2"]));
    assert!(eventually(SYNC_TIMEOUT, || h.ips("shop", "db") == addrs(&["10.1.0.1", "10.1.0.2"])).await);
    h.api.update(endpoint_slice("shop", "db-a", "db", &["10.1.0.7"]));
    assert!(eventually(SYNC_TIMEOUT, || h.ips("shop", "db") == addrs(&["10.1.0.7", "10.1.0.2"])).await);
    h.api.delete(Resource::EndpointSlices, "shop", "db-b");
    assert!(eventually(SYNC_TIMEOUT, || h.ips("shop", "db") == addrs(&["10.1.0.7"])).await);

    // An update that cannot be reduced removes the old version instead of leaving it stale.
    let mut broken = endpoint_slice("shop", "db-a", "db", &["10.1.0.8"]);
    broken["endpoints"][0]["addresses"] = json!(["not-an-ip"]);
    h.api.update(broken);
    assert!(eventually(SYNC_TIMEOUT, || h.ips("shop", "db") == Some(vec![])).await);
    assert_eq!(h.metrics.skipped.with_label_values(&["endpointslices"]).get(), 1);
    assert_eq!(h.metrics.endpoints.get(), 0);
    assert_eq!((h.restarts("services"), h.restarts("endpointslices")), (0, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_never_drops_existing_names() {
    let h = Harness::start(vec![
        headless_service("shop", "stay"),
        endpoint_slice("shop", "stay-a", "stay", &["10.1.0.1"]),
        service("shop", "gone", &["10.96.0.2"]),
    ])
    .await;
    h.synced().await;
    let lists_before = h.api.list_requests(Resource::Services);

    // Sample the index in a tight loop on its own thread for the whole relist.
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (index, stop, samples, misses) = (h.index.clone(), stop.clone(), samples.clone(), misses.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = index.is_synced() && ips(&index, "shop", "stay").is_some_and(|ips| !ips.is_empty());
                samples.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::yield_now();
            }
        })
    };

    h.api.set_list_delay(Duration::from_millis(300));
    h.api.expire_history();
    h.api.delete(Resource::Services, "shop", "gone");
    h.api.create(service("shop", "new", &["10.96.0.3"]));
    let relisted = || {
        h.restarts("services") == 1
            && h.restarts("endpointslices") == 1
            && h.has("shop", "new")
            && !h.has("shop", "gone")
    };
    assert!(eventually(SYNC_TIMEOUT, relisted).await, "relisted after 410 Gone");
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    assert!(samples.load(Ordering::Relaxed) > 0);
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "shop/stay (and its endpoint) vanished during the relist"
    );
    assert!(h.api.list_requests(Resource::Services) > lists_before);
    assert_eq!(h.ips("shop", "stay"), addrs(&["10.1.0.1"]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_dropped_connection_without_relisting() {
    let h = Harness::start(vec![service("shop", "web", &["10.96.0.5"])]).await;
    h.synced().await;
    let watching = || Resource::ALL.into_iter().all(|r| h.api.open_watches(r) == 1);
    assert!(eventually(SYNC_TIMEOUT, watching).await);
    let seen = h.api.create(service("shop", "x", &["10.96.0.7"]));
    assert!(eventually(SYNC_TIMEOUT, || h.has("shop", "x")).await);
    let lists = Resource::ALL.map(|r| h.api.list_requests(r));
    let watches = h.api.watch_requests(Resource::Services);

    h.api.drop_watches();
    // Made while disconnected (or just after): the resumed watch replays it.
    h.api.create(service("shop", "y", &["10.96.0.8"]));
    assert!(
        eventually(SYNC_TIMEOUT, || h.has("shop", "y")).await,
        "the resumed watch delivered the change"
    );

    let rewatch = &h.api.requests_of(Resource::Services, Some(Verb::Watch))[watches];
    assert_eq!(
        rewatch.param("resourceVersion"),
        Some(seen.to_string().as_str()),
        "resumed from the last version"
    );
    assert_eq!(Resource::ALL.map(|r| h.api.list_requests(r)), lists, "no relist");
    assert_eq!((h.restarts("services"), h.restarts("endpointslices")), (0, 0));
    assert!(h.has("shop", "web") && h.has("shop", "x"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_move_the_resume_point() {
    let h = Harness::start(vec![
        service("shop", "web", &["10.96.0.5"]),
        headless_service("shop", "db"),
    ])
    .await;
    h.synced().await;
    let watching = || Resource::ALL.into_iter().all(|r| h.api.open_watches(r) == 1);
    assert!(eventually(SYNC_TIMEOUT, watching).await);
    // Slices move the global version on; the services watch sees none of it but the bookmark.
    for i in 0..5 {
        h.api
            .create(endpoint_slice("shop", &format!("db-{i}"), "db", &["10.1.0.1"]));
    }
    let watches = h.api.watch_requests(Resource::Services);
    let mark = h.api.bookmark();
    h.api.end_watches();
    assert!(eventually(SYNC_TIMEOUT, || h.api.watch_requests(Resource::Services) > watches).await);
    let rewatch = &h.api.requests_of(Resource::Services, Some(Verb::Watch))[watches];
    assert_eq!(rewatch.param("resourceVersion"), Some(mark.to_string().as_str()));
    assert_eq!(h.api.list_requests(Resource::Services), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let h = Harness::start(vec![service("shop", "web", &["10.96.0.5"])]).await;
    h.synced().await;
    let watching = || Resource::ALL.into_iter().all(|r| h.api.open_watches(r) == 1);
    assert!(eventually(SYNC_TIMEOUT, watching).await);
    let before = h.api.total_requests(Resource::Services);

    h.api.fail_next_on(Resource::Services, 2, 429, Some(1));
    h.api.end_watches();
    assert!(
        eventually(SYNC_TIMEOUT, || h.api.open_watches(Resource::Services) == 1).await,
        "recovered"
    );
    h.api.create(service("shop", "after", &["10.96.0.6"]));
    assert!(eventually(SYNC_TIMEOUT, || h.has("shop", "after")).await);

    let reqs = &h.api.requests_of(Resource::Services, None)[before..];
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>()[..3], [429, 429, 200]);
    for pair in reqs.windows(2).filter(|p| p[0].status == 429) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(950),
            "retried {gap:?} after a 429 with Retry-After: 1"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_exponentially() {
    let h = Harness::start(vec![service("shop", "web", &["10.96.0.5"])]).await;
    h.synced().await;
    let watching = || Resource::ALL.into_iter().all(|r| h.api.open_watches(r) == 1);
    assert!(eventually(SYNC_TIMEOUT, watching).await);
    let before = h.api.total_requests(Resource::Services);

    // Every services request fails from now on; the 410 forces the list path,
    // where the watcher emits Init before every attempt.
    h.api.fail_next_on(Resource::Services, 1000, 500, None);
    h.api.expire_history();
    let failed = || {
        h.api.requests_of(Resource::Services, None)[before..]
            .iter()
            .filter(|r| r.status == 500)
            .count()
    };
    assert!(eventually(SYNC_TIMEOUT, || failed() >= 2).await);
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a measurement window, not a synchronisation
    let reqs: Vec<_> = h.api.requests_of(Resource::Services, None)[before..].to_vec();
    let in_window = reqs.iter().filter(|r| r.at >= window_start).count();
    assert!(in_window < 5, "{in_window} requests in 2 s of continuous failure");
    assert!(reqs.iter().all(|r| r.verb == Verb::List));
    let gaps: Vec<Duration> = reqs.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(1500),
        "the backoff grew (not reset by Init): {gaps:?}"
    );
    assert!(
        h.index.is_synced() && h.has("shop", "web"),
        "the old index keeps serving"
    );

    h.api.clear_faults();
    assert!(
        eventually(Duration::from_secs(30), || h.restarts("services") >= 1
            && h.api.open_watches(Resource::Services) == 1)
        .await
    );
    assert!(h.has("shop", "web"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_from_a_kubeconfig_file() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeKubeApi::start(vec![service("default", "kubernetes", &["10.96.0.1"])]).await;
    let path = api.kubeconfig_file(dir.path());
    let client = kubernetes::client(Some(&path))
        .await
        .expect("a client from the kubeconfig");
    let h = Harness::run(api, client);
    h.synced().await;
    assert!(h.has("default", "kubernetes"));
    h.stop().await;

    let missing = dir.path().join("nope.yaml");
    let Err(err) = kubernetes::client(Some(&missing)).await else {
        panic!("a client from a missing kubeconfig")
    };
    let err = err.to_string();
    assert!(err.contains("nope.yaml"), "the error names the path: {err}");
}
