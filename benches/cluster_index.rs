//! The cluster index at the size DESIGN §4 sets: 10,000 services and
//! 100,000 endpoints must fit "well under 100 MiB" on a node.
//!
//! Generates a cluster as the sources would hand it to the index (reduced
//! model objects): 80% ClusterIP services with 1–3 named ports, 5%
//! dual-stack ClusterIP, 15% headless; 100,000 endpoints in EndpointSlices of
//! at most 100 endpoints, for headless and ClusterIP services alike (real
//! clusters have slices for both; DNS only publishes the headless ones), a
//! skewed number per service, 30% of the headless endpoints with hostnames
//! (StatefulSets), a few not ready or terminating.
//!
//! Measures live heap bytes with a counting global allocator around
//! `IndexWriter::replace_all`: services alone first, then services with
//! slices, so the cost splits into per service and per endpoint; then the
//! writer's side (the reduced objects) against the readers' side (the
//! published snapshot). Times the full build, 1,000 single changes through
//! `apply`, and lookups. Prints a markdown table.
//!
//! `cargo bench --bench cluster_index` (a plain `main`, no harness).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use nodens::cluster::index::{new_index, service_labels, Labels};
use nodens::cluster::model::{Change, Endpoint, EndpointSlice, Port, Protocol, Service, ServiceKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Counting allocator: live bytes as requested, and as glibc malloc would hold
// them (16-byte chunks with an 8-byte header, 32 bytes at least).
// ---------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static LIVE_CHUNKS: AtomicIsize = AtomicIsize::new(0);
static LIVE_COUNT: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

fn add(size: usize, count: isize) {
    LIVE.fetch_add(size as isize * count.signum(), Ordering::Relaxed);
    LIVE_CHUNKS.fetch_add(chunk(size) * count.signum(), Ordering::Relaxed);
    LIVE_COUNT.fetch_add(count, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(layout.size(), -1);
            add(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live heap: (bytes requested, bytes in malloc chunks, allocations).
#[derive(Clone, Copy, Debug)]
struct Heap {
    bytes: isize,
    chunks: isize,
    count: isize,
}

fn heap() -> Heap {
    Heap {
        bytes: LIVE.load(Ordering::Relaxed),
        chunks: LIVE_CHUNKS.load(Ordering::Relaxed),
        count: LIVE_COUNT.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for Heap {
    type Output = Heap;
    fn sub(self, o: Heap) -> Heap {
        Heap {
            bytes: self.bytes - o.bytes,
            chunks: self.chunks - o.chunks,
            count: self.count - o.count,
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------
// The generated cluster
// ---------------------------------------------------------------------------

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 100_000;
const NAMESPACES: usize = 400;
const SLICE_MAX: usize = 100;
const HOSTNAME_SHARE: f64 = 0.30;
const CHANGES: usize = 1_000;
const LOOKUPS: usize = 1_000_000;

const WORDS: &[&str] = &[
    "payments",
    "checkout",
    "cart",
    "catalog",
    "search",
    "users",
    "auth",
    "orders",
    "billing",
    "inventory",
    "shipping",
    "notify",
    "gateway",
    "frontend",
    "backend",
    "api",
    "worker",
    "cache",
    "redis",
    "postgres",
    "kafka",
    "zookeeper",
    "metrics",
    "logging",
    "ingest",
    "reports",
    "pricing",
    "reviews",
    "media",
    "images",
    "profile",
    "session",
    "ledger",
    "fraud",
    "risk",
    "ml",
    "feature",
    "recommend",
    "email",
    "sms",
];
const TEAMS: &[&str] = &["team", "platform", "data", "growth", "core", "infra", "mobile", "web"];
const ENVS: &[&str] = &["prod", "staging", "dev", "canary", "qa"];
const PORTS: &[(&str, u16, Protocol)] = &[
    ("http", 80, Protocol::Tcp),
    ("https", 443, Protocol::Tcp),
    ("grpc", 9090, Protocol::Tcp),
    ("metrics", 9100, Protocol::Tcp),
    ("admin", 8081, Protocol::Tcp),
    ("tcp-app", 7000, Protocol::Tcp),
    ("dns", 53, Protocol::Udp),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    DualStack,
    Headless,
}

struct Cluster {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    /// Endpoints (entries in slices) per kind.
    endpoints: usize,
    headless_endpoints: usize,
    hostnames: usize,
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn suffix(rng: &mut StdRng, n: usize) -> String {
    const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect()
}

fn v4(base: u32, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + i as u32))
}

fn v6(base: u128, i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(base + i as u128))
}

fn generate(seed: u64) -> Cluster {
    let mut rng = StdRng::seed_from_u64(seed);
    let namespaces: Vec<String> = (0..NAMESPACES)
        .map(|i| {
            format!(
                "{}-{}-{}-{i}",
                pick(&mut rng, TEAMS),
                pick(&mut rng, WORDS),
                pick(&mut rng, ENVS)
            )
        })
        .collect();

    // Kinds: exactly 80% / 5% / 15%, shuffled.
    let mut kinds: Vec<Kind> = (0..SERVICES)
        .map(|i| match i * 100 / SERVICES {
            0..80 => Kind::ClusterIp,
            80..85 => Kind::DualStack,
            _ => Kind::Headless,
        })
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.random_range(0..=i));
    }

    // Endpoints per service: log-uniform 1..300, scaled to the total exactly.
    let weights: Vec<f64> = (0..SERVICES)
        .map(|_| (rng.random::<f64>() * 300f64.ln()).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut counts: Vec<usize> = weights
        .iter()
        .map(|w| ((w * ENDPOINTS as f64 / sum).round() as usize).max(1))
        .collect();
    // Dual-stack services have every pod in an IPv4 and an IPv6 slice: half the pods, two entries each.
    for (i, k) in kinds.iter().enumerate() {
        if *k == Kind::DualStack {
            counts[i] = (counts[i] / 2).max(1) * 2;
        }
    }
    // Rounding and the minimums leave the sum off: settle it one endpoint at a time (single-stack services).
    let mut sum: usize = counts.iter().sum();
    while sum != ENDPOINTS {
        let i = rng.random_range(0..SERVICES);
        if kinds[i] == Kind::DualStack {
            continue;
        }
        if sum < ENDPOINTS {
            counts[i] += 1;
            sum += 1;
        } else if counts[i] > 1 {
            counts[i] -= 1;
            sum -= 1;
        }
    }

    // StatefulSets (hostnames for every endpoint) among headless services, until 30% of headless endpoints.
    let headless_total: usize = (0..SERVICES)
        .filter(|&i| kinds[i] == Kind::Headless)
        .map(|i| counts[i])
        .sum();
    let mut stateful = vec![false; SERVICES];
    let mut with_hostname = 0;
    for i in (0..SERVICES).filter(|&i| kinds[i] == Kind::Headless) {
        if (with_hostname as f64) < HOSTNAME_SHARE * headless_total as f64 && rng.random_bool(0.5) {
            stateful[i] = true;
            with_hostname += counts[i];
        }
    }

    let cluster_v4 = u32::from(Ipv4Addr::new(10, 96, 0, 10));
    let cluster_v6 = u128::from("fd00:10:96::a".parse::<Ipv6Addr>().unwrap());
    let pod_v4 = u32::from(Ipv4Addr::new(10, 128, 0, 2));
    let pod_v6 = u128::from("fd00:10:244::2".parse::<Ipv6Addr>().unwrap());
    let (mut next_cluster, mut next_pod) = (0usize, 0usize);

    let mut services = Vec::with_capacity(SERVICES);
    let mut slices = Vec::new();
    let mut taken = HashSet::new();
    let (mut total, mut headless_eps, mut hostnames) = (0, 0, 0);
    for i in 0..SERVICES {
        let ns = namespaces[rng.random_range(0..NAMESPACES)].as_str();
        let mut name = format!("{}-{}", pick(&mut rng, WORDS), pick(&mut rng, WORDS));
        if !taken.insert((ns, name.clone())) {
            name = format!("{name}-{i}");
            taken.insert((ns, name.clone()));
        }
        let kind = kinds[i];
        let nports = if kind == Kind::Headless {
            rng.random_range(1..=2)
        } else {
            rng.random_range(1..=3)
        };
        let mut ports: Vec<Port> = Vec::new();
        while ports.len() < nports {
            let (pname, port, protocol) = PORTS[rng.random_range(0..PORTS.len())];
            if !ports.iter().any(|p| &*p.name == pname) {
                ports.push(Port {
                    name: pname.into(),
                    protocol,
                    port,
                });
            }
        }
        let service_kind = match kind {
            Kind::ClusterIp => ServiceKind::ClusterIp(vec![v4(cluster_v4, next_cluster)].into()),
            Kind::DualStack => {
                ServiceKind::ClusterIp(vec![v4(cluster_v4, next_cluster), v6(cluster_v6, next_cluster)].into())
            }
            Kind::Headless => ServiceKind::Headless,
        };
        next_cluster += 1;
        // Slices carry the target ports, under the same names.
        let slice_ports: Box<[Port]> = ports
            .iter()
            .map(|p| Port {
                port: p.port.wrapping_add(8000).max(1),
                ..p.clone()
            })
            .collect();

        // The pods: (v4, v6 if dual-stack, hostname).
        let pods = if kind == Kind::DualStack {
            counts[i] / 2
        } else {
            counts[i]
        };
        let mut families: Vec<Vec<Endpoint>> = vec![Vec::new(); if kind == Kind::DualStack { 2 } else { 1 }];
        for p in 0..pods {
            let r: f64 = rng.random();
            let (ready, terminating) = match r {
                r if r < 0.94 => (true, false),
                r if r < 0.98 => (false, false),
                _ => (false, true),
            };
            let hostname: Option<Box<str>> = stateful[i].then(|| format!("{name}-{p}").into());
            for (f, eps) in families.iter_mut().enumerate() {
                let ip = if f == 0 {
                    v4(pod_v4, next_pod)
                } else {
                    v6(pod_v6, next_pod)
                };
                eps.push(Endpoint {
                    addresses: vec![ip].into(),
                    hostname: hostname.clone(),
                    ready,
                    terminating,
                });
            }
            next_pod += 1;
        }
        for eps in families {
            total += eps.len();
            if kind == Kind::Headless {
                headless_eps += eps.len();
                hostnames += eps.iter().filter(|e| e.hostname.is_some()).count();
            }
            for chunk in eps.chunks(SLICE_MAX) {
                slices.push(EndpointSlice {
                    namespace: ns.into(),
                    name: format!("{name}-{}", suffix(&mut rng, 5)).into(),
                    service: name.as_str().into(),
                    ports: slice_ports.clone(),
                    endpoints: chunk.to_vec().into(),
                });
            }
        }
        services.push(Service {
            namespace: ns.into(),
            name: name.into(),
            kind: service_kind,
            ports: ports.into(),
            publish_not_ready: kind == Kind::Headless && rng.random_bool(0.05),
        });
    }
    Cluster {
        services,
        slices,
        endpoints: total,
        headless_endpoints: headless_eps,
        hostnames,
    }
}

/// 1,000 single-object changes of the kinds a watch delivers: most are
/// endpoint churn (readiness flips, scale-ups), then service edits,
/// creations and deletions.
fn changes(cluster: &Cluster, rng: &mut StdRng) -> Vec<Change> {
    let mut out = Vec::with_capacity(CHANGES);
    let mut next_pod = 0usize;
    for i in 0..CHANGES {
        let r = rng.random_range(0..100);
        let change = match r {
            // A pod turns ready or not ready.
            0..45 => {
                let mut s = cluster.slices[rng.random_range(0..cluster.slices.len())].clone();
                let mut eps = s.endpoints.to_vec();
                let e = rng.random_range(0..eps.len());
                eps[e].ready = !eps[e].ready;
                s.endpoints = eps.into();
                Change::UpsertSlice(s)
            }
            // A pod is added (scale-up) to a slice with room.
            45..65 => {
                let mut s = cluster.slices[rng.random_range(0..cluster.slices.len())].clone();
                let mut eps = s.endpoints.to_vec();
                if eps.len() >= SLICE_MAX {
                    eps.pop();
                }
                let ip = v4(u32::from(Ipv4Addr::new(10, 200, 0, 2)), next_pod);
                next_pod += 1;
                eps.push(Endpoint {
                    addresses: vec![ip].into(),
                    hostname: None,
                    ready: true,
                    terminating: false,
                });
                s.endpoints = eps.into();
                Change::UpsertSlice(s)
            }
            // A service edit: ports change.
            65..80 => {
                let mut s = cluster.services[rng.random_range(0..cluster.services.len())].clone();
                let mut ports = s.ports.to_vec();
                ports[0].port = ports[0].port.wrapping_add(1).max(1);
                s.ports = ports.into();
                Change::UpsertService(s)
            }
            // A new service.
            80..90 => {
                let ip = v4(u32::from(Ipv4Addr::new(10, 100, 0, 2)), i);
                Change::UpsertService(Service {
                    namespace: cluster.services[i].namespace.clone(),
                    name: format!("new-service-{i}").into(),
                    kind: ServiceKind::ClusterIp(vec![ip].into()),
                    ports: vec![Port {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 80,
                    }]
                    .into(),
                    publish_not_ready: false,
                })
            }
            // A service deleted.
            _ => {
                let s = &cluster.services[rng.random_range(0..cluster.services.len())];
                Change::DeleteService {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                }
            }
        };
        out.push(change);
    }
    out
}

fn ns_per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let cluster = generate(0x6e6f_6465_6e73);
    // What DNS publishes: the addresses of headless services' endpoints that
    // are ready (or all, with publishNotReadyAddresses) and not terminating.
    let published_endpoints = {
        let headless: HashSet<(&str, &str, bool)> = cluster
            .services
            .iter()
            .filter(|s| s.kind == ServiceKind::Headless)
            .map(|s| (&*s.namespace, &*s.name, s.publish_not_ready))
            .collect();
        cluster
            .slices
            .iter()
            .filter_map(|s| {
                let pnr = if headless.contains(&(&*s.namespace, &*s.service, true)) {
                    true
                } else if headless.contains(&(&*s.namespace, &*s.service, false)) {
                    false
                } else {
                    return None;
                };
                Some(s.endpoints.iter().filter(move |e| (e.ready || pnr) && !e.terminating))
            })
            .flatten()
            .count()
    };

    // 1. Services alone.
    let m0 = heap();
    let (mut writer, handle) = new_index();
    writer.replace_all(cluster.services.clone(), Vec::new());
    let services_only = heap() - m0;
    drop((writer, handle));
    let leaked = heap() - m0;

    // 2. Services and slices: the full build.
    let m0 = heap();
    let (mut writer, handle) = new_index();
    let (services, slices) = (cluster.services.clone(), cluster.slices.clone());
    let started = Instant::now();
    writer.replace_all(services, slices);
    let build = started.elapsed();
    let full = heap() - m0;
    let indexed_endpoints = writer.endpoint_count();
    let indexed_services = writer.service_count();

    // 3. 1,000 single changes, one `apply` (and publish) each.
    let mut rng = StdRng::seed_from_u64(7);
    let list = changes(&cluster, &mut rng);
    let mut took = Vec::with_capacity(list.len());
    for change in list {
        let t = Instant::now();
        writer.apply(change);
        took.push(t.elapsed());
    }
    let apply_total: Duration = took.iter().sum();
    took.sort();
    let after_changes = heap() - m0;

    // 4. Lookups of random names: 90% existing services, 10% names that do not exist.
    let mut keys: Vec<Labels> = cluster
        .services
        .iter()
        .map(|s| service_labels(&s.namespace, &s.name))
        .collect();
    let existing = keys.len();
    keys.extend((0..existing / 9).map(|i| service_labels(&cluster.services[i].namespace, &format!("missing-{i}"))));
    let picks: Vec<u32> = (0..LOOKUPS).map(|_| rng.random_range(0..keys.len() as u32)).collect();
    let ips: Vec<IpAddr> = (0..LOOKUPS)
        .map(|_| v4(u32::from(Ipv4Addr::new(10, 128, 0, 2)), rng.random_range(0..ENDPOINTS)))
        .collect();

    let snap = handle.load();
    let mut found = 0usize;
    let t = Instant::now();
    for &i in &picks {
        found += black_box(snap.services.get(&keys[i as usize][..])).is_some() as usize;
    }
    let get = t.elapsed();

    let t = Instant::now();
    for &i in &picks {
        let s = handle.load();
        black_box(s.services.get(&keys[i as usize][..]));
    }
    let load_get = t.elapsed();

    let t = Instant::now();
    for ip in &ips {
        black_box(snap.ptr.get(ip));
    }
    let ptr_get = t.elapsed();
    drop((snap, keys, picks, ips));

    // 5. The writer's side (reduced objects) against the readers' side (the snapshot).
    drop(writer);
    let readers = heap() - m0;
    drop(handle);

    let per_service = services_only.bytes as f64 / SERVICES as f64;
    let per_endpoint = (full.bytes - services_only.bytes) as f64 / cluster.endpoints as f64;
    let per_endpoint_chunks = (full.chunks - services_only.chunks) as f64 / cluster.endpoints as f64;

    println!("## cluster index: {SERVICES} services, {} endpoints", cluster.endpoints);
    println!();
    println!(
        "{} services (80% ClusterIP, 5% dual-stack, 15% headless) in {NAMESPACES} namespaces; {} EndpointSlices \
         (≤ {SLICE_MAX} endpoints); {} endpoints, {} of them headless ({} with hostnames); the index publishes \
         {indexed_services} services and {indexed_endpoints} headless endpoint addresses (expected \
         {published_endpoints}).",
        cluster.services.len(),
        cluster.slices.len(),
        cluster.endpoints,
        cluster.headless_endpoints,
        cluster.hostnames,
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| total index memory (heap, requested) | {:.1} MiB ({} allocations) |",
        full.bytes as f64 / MIB,
        full.count
    );
    println!(
        "| total with malloc chunk overhead (est.) | {:.1} MiB |",
        full.chunks as f64 / MIB
    );
    println!(
        "| services alone | {:.1} MiB, **{per_service:.0} B/service** ({:.0} B with overhead) |",
        services_only.bytes as f64 / MIB,
        services_only.chunks as f64 / SERVICES as f64
    );
    println!(
        "| endpoints (full − services alone) | {:.1} MiB, **{per_endpoint:.0} B/endpoint** ({per_endpoint_chunks:.0} B \
         with overhead) |",
        (full.bytes - services_only.bytes) as f64 / MIB
    );
    println!(
        "| after {CHANGES} changes: total = writer's objects + readers' snapshot | {:.1} = {:.1} + {:.1} MiB |",
        after_changes.bytes as f64 / MIB,
        (after_changes.bytes - readers.bytes) as f64 / MIB,
        readers.bytes as f64 / MIB
    );
    println!("| full build (`replace_all`) | {:.1} ms |", build.as_secs_f64() * 1e3);
    println!(
        "| {CHANGES} single changes (`apply`, publish each) | {:.1} µs mean, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs |",
        apply_total.as_secs_f64() * 1e6 / CHANGES as f64,
        percentile(&took, 0.50).as_secs_f64() * 1e6,
        percentile(&took, 0.99).as_secs_f64() * 1e6,
        took.last().unwrap().as_secs_f64() * 1e6
    );
    println!(
        "| `snapshot.services.get` (random, 10% misses) | {:.0} ns |",
        ns_per(get, LOOKUPS)
    );
    println!("| `handle.load()` + `get` | {:.0} ns |", ns_per(load_get, LOOKUPS));
    println!(
        "| `snapshot.ptr.get` (random pod IPs) | {:.0} ns |",
        ns_per(ptr_get, LOOKUPS)
    );
    println!();
    println!(
        "Target (DESIGN §4): well under 100 MiB — {}. Heap left after dropping the services-only index: {} B in {} \
         allocations. Lookups found {found} of {LOOKUPS}.",
        if full.chunks as f64 / MIB < 100.0 {
            "met"
        } else {
            "NOT met"
        },
        leaked.bytes,
        leaked.count
    );
}
