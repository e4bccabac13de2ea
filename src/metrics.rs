//! Metrics: one registry passed into constructors (no global), names prefixed
//! `nodens_`, bounded label sets only (never a client address or a query name).
//!
//! Owns: metric definitions and their label sets. The hot path counts into
//! per-worker local copies (`WorkerMetrics`) flushed every few batches, so
//! two workers never contend on a shared atomic per query.

use prometheus::core::{AtomicU64, GenericCounter};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Query types with their own label; everything else is "other".
pub const QTYPES: [(u16, &str); 12] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (15, "MX"),
    (2, "NS"),
    (12, "PTR"),
    (6, "SOA"),
    (33, "SRV"),
    (16, "TXT"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (255, "ANY"),
];
const QTYPE_LABELS: usize = QTYPES.len() + 1;

/// Response codes with their own label; everything else is "other".
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cache = 0,
    Upstream = 1,
    /// Answered by nodens itself: guard errors, RFC 8482, overload.
    Local = 2,
    /// Answered by the cluster zone's authority from the index.
    Cluster = 3,
    /// A search-path walk answered with a CNAME (DESIGN §3).
    Shortcut = 4,
}
const SOURCES: [&str; 5] = ["cache", "upstream", "local", "cluster", "shortcut"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp = 0,
    Tcp = 1,
}
const PROTOS: [&str; 2] = ["udp", "tcp"];

fn qtype_index(qtype: u16) -> usize {
    QTYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(QTYPES.len())
}

fn rcode_index(rcode: u8) -> usize {
    (rcode as usize).min(RCODES.len() - 1)
}

/// Why a datagram got no answer at all, or an answer we had to shed.
#[derive(Clone, Copy, Debug)]
pub enum Drop {
    /// Not a query: too short, or a response.
    Malformed = 0,
    /// The miss path was full (`max_inflight`): answered SERVFAIL.
    Overload = 1,
    /// The kernel would not take the answer (send buffer full).
    SendFailed = 2,
}
const DROPS: [&str; 3] = ["malformed", "overload", "send_failed"];

/// Metrics of the cluster index and its sources.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Services in the index.
    pub services: IntGauge,
    /// Endpoint addresses published for headless services.
    pub endpoints: IntGauge,
    /// Unix time of the last complete sync (initial list, relist, file load).
    pub last_sync: prometheus::Gauge,
    /// Watch streams restarted, by resource (errors, 410 Gone relists).
    pub watch_restarts: IntCounterVec,
    /// Objects a source could not reduce and skipped, by resource.
    pub skipped: IntCounterVec,
    /// Static file reloads, by outcome (ok, error).
    pub reloads: IntCounterVec,
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let m = ClusterMetrics {
            services: IntGauge::new("nodens_cluster_services", "Services in the cluster index")?,
            endpoints: IntGauge::new("nodens_cluster_endpoints", "Endpoint addresses published for headless services")?,
            last_sync: prometheus::Gauge::new(
                "nodens_cluster_last_sync_timestamp_seconds",
                "Unix time of the last complete sync of the cluster index",
            )?,
            watch_restarts: IntCounterVec::new(
                Opts::new("nodens_cluster_watch_restarts_total", "Watch streams restarted, by resource"),
                &["resource"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new("nodens_cluster_objects_skipped_total", "Objects skipped as unusable, by resource"),
                &["resource"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new("nodens_cluster_static_reloads_total", "Static cluster-state file loads, by outcome"),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.services.clone()))?;
        registry.register(Box::new(m.endpoints.clone()))?;
        registry.register(Box::new(m.last_sync.clone()))?;
        registry.register(Box::new(m.watch_restarts.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        Ok(m)
    }

    /// Updates the size gauges after the writer published.
    pub fn published(&self, writer: &crate::cluster::index::IndexWriter) {
        self.services.set(writer.service_count() as i64);
        self.endpoints.set(writer.endpoint_count() as i64);
    }

    /// Records a complete sync now.
    pub fn synced(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }
}

/// Every metric of the data plane, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: Vec<IntCounter>,
    responses: Vec<IntCounter>,
    durations: Vec<Histogram>,
    drops: Vec<IntCounter>,
    pub upstream_requests: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub tcp_connections: IntGauge,
    pub inflight: IntGauge,
    pub cluster: ClusterMetrics,
    /// Search-path walks by outcome: where the name was found, or not_found.
    shortcuts: IntCounterVec,
    /// Bare names warmed in the background (`shortcut = "nxdomain"`).
    pub warms: IntCounter,
}

impl Metrics {
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "nodens_requests_total",
                "DNS queries received, by transport and query type",
            ),
            &["proto", "qtype"],
        )?;
        let responses = IntCounterVec::new(
            Opts::new(
                "nodens_responses_total",
                "DNS answers sent, by rcode and by what answered",
            ),
            &["rcode", "source"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "nodens_request_duration_seconds",
                "Time from reading a query to sending its answer, by what answered",
            )
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0,
            ]),
            &["source"],
        )?;
        let drops = IntCounterVec::new(
            Opts::new("nodens_dropped_total", "Queries not answered normally, by reason"),
            &["reason"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "nodens_upstream_requests_total",
                "Queries sent upstream, by upstream and outcome",
            ),
            &["upstream", "outcome"],
        )?;
        let cache_entries = IntGauge::new("nodens_cache_entries", "Entries in the answer cache")?;
        let cache_bytes = IntGauge::new("nodens_cache_bytes", "Weighed size of the answer cache in bytes")?;
        let tcp_connections = IntGauge::new("nodens_tcp_connections", "Open client TCP connections")?;
        let inflight = IntGauge::new("nodens_inflight_queries", "Queries waiting on the miss path")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(drops.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(tcp_connections.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        let cluster = ClusterMetrics::new(&registry)?;
        let shortcuts = IntCounterVec::new(
            Opts::new("nodens_shortcut_walks_total", "Search-path walks by outcome (where the name was found)"),
            &["outcome"],
        )?;
        let warms = IntCounter::new("nodens_shortcut_warms_total", "Bare names looked up ahead of the client")?;
        registry.register(Box::new(shortcuts.clone()))?;
        registry.register(Box::new(warms.clone()))?;

        let qtype_names = QTYPES.iter().map(|(_, n)| *n).chain(["other"]);
        let requests = PROTOS
            .iter()
            .flat_map(|p| qtype_names.clone().map(move |q| (p, q)))
            .map(|(p, q)| requests.with_label_values(&[p, q]))
            .collect();
        let responses = SOURCES
            .iter()
            .flat_map(|s| RCODES.iter().map(move |r| (s, r)))
            .map(|(s, r)| responses.with_label_values(&[r, s]))
            .collect();
        Ok(Metrics {
            registry,
            requests,
            responses,
            durations: SOURCES.iter().map(|s| duration.with_label_values(&[s])).collect(),
            drops: DROPS.iter().map(|d| drops.with_label_values(&[d])).collect(),
            upstream_requests,
            cache_entries,
            cache_bytes,
            tcp_connections,
            inflight,
            cluster,
            shortcuts,
            warms,
        })
    }

    pub fn request(&self, proto: Proto, qtype: u16) {
        self.requests[proto as usize * QTYPE_LABELS + qtype_index(qtype)].inc();
    }

    pub fn response(&self, source: Source, rcode: u8, seconds: f64) {
        self.responses[source as usize * RCODES.len() + rcode_index(rcode)].inc();
        self.durations[source as usize].observe(seconds);
    }

    pub fn drop(&self, why: Drop) {
        self.drops[why as usize].inc();
    }

    /// Counts a search-path walk; `outcome` is one of cluster, host_domain, bare_name, not_found.
    pub fn shortcut(&self, outcome: &str) {
        self.shortcuts.with_label_values(&[outcome]).inc();
    }

    /// Local copies for one UDP worker thread.
    pub fn worker(&self) -> WorkerMetrics {
        let local = |v: &[GenericCounter<AtomicU64>]| v.iter().map(|c| c.local()).collect();
        WorkerMetrics {
            requests: local(&self.requests[..QTYPE_LABELS]),
            responses: local(&self.responses),
            durations: self.durations.iter().map(|h| h.local()).collect(),
            drops: local(&self.drops),
        }
    }
}

/// One worker's unflushed counts; `flush` publishes them.
pub struct WorkerMetrics {
    requests: Vec<LocalIntCounter>,
    responses: Vec<LocalIntCounter>,
    durations: Vec<LocalHistogram>,
    drops: Vec<LocalIntCounter>,
}

impl WorkerMetrics {
    pub fn request(&mut self, qtype: u16) {
        self.requests[qtype_index(qtype)].inc();
    }

    pub fn response(&mut self, source: Source, rcode: u8, seconds: f64) {
        self.responses[source as usize * RCODES.len() + rcode_index(rcode)].inc();
        self.durations[source as usize].observe(seconds);
    }

    pub fn drop(&mut self, why: Drop) {
        self.drops[why as usize].inc();
    }

    pub fn flush(&mut self) {
        self.requests
            .iter_mut()
            .chain(&mut self.responses)
            .chain(&mut self.drops)
            .for_each(|c| c.flush());
        self.durations.iter_mut().for_each(|h| h.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_local_counts_flush() {
        let m = Metrics::new(Registry::new()).unwrap();
        let mut w = m.worker();
        w.request(1);
        w.request(9999);
        w.response(Source::Cache, 0, 0.0001);
        w.response(Source::Cache, 23, 0.0001);
        m.request(Proto::Tcp, 28);
        w.flush();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"nodens_requests_total{proto="udp",qtype="A"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"nodens_requests_total{proto="udp",qtype="other"} 1"#));
        assert!(text.contains(r#"nodens_requests_total{proto="tcp",qtype="AAAA"} 1"#));
        assert!(text.contains(r#"nodens_responses_total{rcode="other",source="cache"} 1"#));
    }
}
