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
    /// The `hub` source's subscription.
    pub hub: HubSourceMetrics,
}

impl ClusterMetrics {
    /// Registers the cluster metrics (the hub process uses them without the rest).
    pub fn new(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let m = ClusterMetrics {
            services: IntGauge::new("nodens_cluster_services", "Services in the cluster index")?,
            endpoints: IntGauge::new(
                "nodens_cluster_endpoints",
                "Endpoint addresses published for headless services",
            )?,
            last_sync: prometheus::Gauge::new(
                "nodens_cluster_last_sync_timestamp_seconds",
                "Unix time of the last complete sync of the cluster index",
            )?,
            watch_restarts: IntCounterVec::new(
                Opts::new(
                    "nodens_cluster_watch_restarts_total",
                    "Watch streams restarted, by resource",
                ),
                &["resource"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "nodens_cluster_objects_skipped_total",
                    "Objects skipped as unusable, by resource",
                ),
                &["resource"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "nodens_cluster_static_reloads_total",
                    "Static cluster-state file loads, by outcome",
                ),
                &["outcome"],
            )?,
            hub: HubSourceMetrics::new(registry)?,
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }
}

/// The node agent's `hub` source (DESIGN §5).
#[derive(Clone, Debug)]
pub struct HubSourceMetrics {
    /// 1 while a hub stream is open.
    pub connected: IntGauge,
    /// Seconds since the last frame from a hub (heartbeats included): how
    /// stale the served index may be. Grows while no hub is reachable.
    pub staleness: prometheus::Gauge,
    /// Frames applied, by kind (snapshot, delta, heartbeat).
    pub frames: IntCounterVec,
    /// Stream bytes received.
    pub bytes: IntCounter,
    /// Subscription attempts, by outcome (ok, error).
    pub sessions: IntCounterVec,
    /// The hub version the index is at.
    pub version: IntGauge,
    /// 1 while the direct-watch fallback runs.
    pub fallback: IntGauge,
}

impl HubSourceMetrics {
    fn new(registry: &Registry) -> Result<HubSourceMetrics, prometheus::Error> {
        let m = HubSourceMetrics {
            connected: IntGauge::new("nodens_hub_source_connected", "1 while a hub stream is open")?,
            staleness: prometheus::Gauge::new(
                "nodens_hub_source_staleness_seconds",
                "Seconds since the last frame from a hub",
            )?,
            frames: IntCounterVec::new(
                Opts::new("nodens_hub_source_frames_total", "Hub frames applied, by kind"),
                &["kind"],
            )?,
            bytes: IntCounter::new("nodens_hub_source_bytes_total", "Hub stream bytes received")?,
            sessions: IntCounterVec::new(
                Opts::new("nodens_hub_source_sessions_total", "Hub subscriptions, by outcome"),
                &["outcome"],
            )?,
            version: IntGauge::new("nodens_hub_source_version", "The hub version the cluster index is at")?,
            fallback: IntGauge::new(
                "nodens_hub_source_fallback_active",
                "1 while the direct API watch stands in for the hub",
            )?,
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.staleness.clone()))?;
        registry.register(Box::new(m.frames.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.fallback.clone()))?;
        Ok(m)
    }
}

/// The hub process (`nodens hub`, DESIGN §5): its subscribers and what it sent them.
#[derive(Clone, Debug)]
pub struct HubMetrics {
    /// Open index streams.
    pub subscribers: IntGauge,
    /// The index version the hub is at.
    pub version: IntGauge,
    /// Deltas kept for resuming subscribers, and their bytes.
    pub history_frames: IntGauge,
    pub history_bytes: IntGauge,
    /// Size of the last encoded snapshot.
    pub snapshot_bytes: IntGauge,
    /// Snapshots encoded (one serves every subscriber that needs it soon after).
    pub snapshot_encodes: IntCounter,
    /// Stream bytes and frames handed to connections, by kind (snapshot, delta, heartbeat).
    pub bytes_sent: IntCounterVec,
    pub frames_sent: IntCounterVec,
    /// Snapshots sent, by reason: new (no position), origin (a position from
    /// another hub or an earlier run), behind (resnap: the history no longer
    /// has the deltas the subscriber needs).
    pub snapshots_sent: IntCounterVec,
    /// Stream requests, by outcome (ok, unauthorized, not_ready, bad_request).
    pub requests: IntCounterVec,
    /// TLS handshakes (`hub.tls_cert` set), by outcome: ok, failed, timeout.
    /// A rising `failed` is agents that do not trust this hub, or a cleartext agent.
    pub tls_handshakes: IntCounterVec,
}

impl HubMetrics {
    pub fn new(registry: &Registry) -> Result<HubMetrics, prometheus::Error> {
        let m = HubMetrics {
            subscribers: IntGauge::new("nodens_hub_subscribers", "Open index streams")?,
            version: IntGauge::new("nodens_hub_version", "The index version the hub is at")?,
            history_frames: IntGauge::new("nodens_hub_history_frames", "Deltas kept for resuming subscribers")?,
            history_bytes: IntGauge::new("nodens_hub_history_bytes", "Bytes of the deltas kept")?,
            snapshot_bytes: IntGauge::new("nodens_hub_snapshot_bytes", "Size of the last encoded snapshot")?,
            snapshot_encodes: IntCounter::new("nodens_hub_snapshot_encodes_total", "Snapshots encoded")?,
            bytes_sent: IntCounterVec::new(
                Opts::new("nodens_hub_bytes_sent_total", "Index stream bytes sent, by frame kind"),
                &["kind"],
            )?,
            frames_sent: IntCounterVec::new(
                Opts::new("nodens_hub_frames_sent_total", "Index stream frames sent, by kind"),
                &["kind"],
            )?,
            snapshots_sent: IntCounterVec::new(
                Opts::new(
                    "nodens_hub_snapshots_sent_total",
                    "Snapshots sent, by reason (new, origin, behind = resnap)",
                ),
                &["reason"],
            )?,
            requests: IntCounterVec::new(
                Opts::new("nodens_hub_requests_total", "Index stream requests, by outcome"),
                &["outcome"],
            )?,
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "nodens_hub_tls_handshakes_total",
                    "TLS handshakes of agent connections, by outcome (ok, failed, timeout)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.subscribers.clone()))?;
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.history_frames.clone()))?;
        registry.register(Box::new(m.history_bytes.clone()))?;
        registry.register(Box::new(m.snapshot_bytes.clone()))?;
        registry.register(Box::new(m.snapshot_encodes.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.frames_sent.clone()))?;
        registry.register(Box::new(m.snapshots_sent.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.tls_handshakes.clone()))?;
        Ok(m)
    }
}

/// Why the upstream shaper shed a query (the `reason` label of
/// `nodens_upstream_shed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The wait queue already held `upstream.queue_size` misses: the newest is shed.
    QueueFull = 0,
    /// No token or in-flight slot within `upstream.queue_wait`.
    QueueTimeout = 1,
    /// The client was over its share and no spare token was left.
    ClientShare = 2,
    /// A refresh found no spare token or in-flight slot.
    NoSpare = 3,
}
const SHED_REASONS: [&str; 4] = ["queue_full", "queue_timeout", "client_share", "no_spare"];

/// Metrics of upstream protection (DESIGN §6, §7): the shaper, coalescing,
/// serve-stale and prefetch. No label carries a client address or a name;
/// the clients shed most are logged instead (`stage::shaper`).
#[derive(Clone, Debug)]
pub struct ProtectionMetrics {
    /// Upstream queries the shaper let through for client misses.
    pub granted_client: IntCounter,
    /// Upstream queries let through from spare capacity (refreshes, clients over their share).
    pub granted_spare: IntCounter,
    /// Packets charged to the token bucket (a UDP try 1, a TCP try 5).
    pub packets: IntCounter,
    /// Misses that had to wait for a token or an in-flight slot.
    pub queued: IntCounter,
    shed: Vec<IntCounter>,
    /// Misses waiting in the shaper's queue now.
    pub waiting: IntGauge,
    /// Upstream queries in flight now (at most `upstream.max_inflight`).
    pub upstream_inflight: IntGauge,
    /// Misses that joined an identical miss already in flight.
    pub coalesced: IntCounter,
    /// Stale answers written on the miss path (after a failure or a shed).
    pub stale_miss: IntCounter,
    /// Hits answered from a stale copy.
    pub stale_hit: IntCounter,
    /// Refreshes sent upstream.
    pub prefetch_sent: IntCounter,
    /// Refreshes not sent: no spare capacity.
    pub prefetch_no_spare: IntCounter,
    /// Refreshes not sent: the name was already being fetched.
    pub prefetch_in_flight: IntCounter,
    /// Refresh requests dropped because the refresh queue was full.
    pub prefetch_dropped: IntCounter,
}

impl ProtectionMetrics {
    pub fn new(registry: &Registry) -> Result<ProtectionMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let vec = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
            let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let granted = vec(
            "nodens_upstream_granted_total",
            "Upstream queries let through by the shaper, by priority",
            "priority",
        )?;
        let shed = vec(
            "nodens_upstream_shed_total",
            "Misses the shaper did not send upstream (answered stale or SERVFAIL), by reason",
            "reason",
        )?;
        let stale = vec(
            "nodens_stale_answers_total",
            "Answers from expired data (RFC 8767), by path",
            "path",
        )?;
        let prefetch = vec(
            "nodens_prefetches_total",
            "Refreshes of entries asked late in their life, by outcome",
            "outcome",
        )?;
        Ok(ProtectionMetrics {
            granted_client: granted.with_label_values(&["client"]),
            granted_spare: granted.with_label_values(&["spare"]),
            packets: counter(
                "nodens_upstream_packets_total",
                "Packets charged to the upstream token bucket (UDP try 1, TCP try 5)",
            )?,
            queued: counter(
                "nodens_upstream_queued_total",
                "Misses that waited for an upstream token or in-flight slot",
            )?,
            shed: SHED_REASONS.iter().map(|r| shed.with_label_values(&[r])).collect(),
            waiting: gauge(
                "nodens_upstream_queue_waiting",
                "Misses waiting in the upstream shaper's queue",
            )?,
            upstream_inflight: gauge("nodens_upstream_inflight", "Upstream queries in flight")?,
            coalesced: counter(
                "nodens_coalesced_waiters_total",
                "Misses that shared an identical upstream query already in flight",
            )?,
            stale_miss: stale.with_label_values(&["miss"]),
            stale_hit: stale.with_label_values(&["hit"]),
            prefetch_sent: prefetch.with_label_values(&["sent"]),
            prefetch_no_spare: prefetch.with_label_values(&["no_spare"]),
            prefetch_in_flight: prefetch.with_label_values(&["in_flight"]),
            prefetch_dropped: prefetch.with_label_values(&["dropped"]),
        })
    }

    pub fn shed(&self, why: ShedReason) {
        self.shed[why as usize].inc();
    }

    pub fn shed_count(&self, why: ShedReason) -> u64 {
        self.shed[why as usize].get()
    }
}

/// Metrics of config reloads (SIGHUP, or a changed config file).
#[derive(Clone, Debug)]
pub struct ConfigMetrics {
    /// Reloads by result: applied, unchanged, rejected.
    pub reloads: IntCounterVec,
    /// 1 when the last reload applied (or nothing changed), 0 when it was rejected.
    pub last_reload_successful: IntGauge,
    /// Unix time of the last reload that left a valid config in place (start-up counts).
    pub last_reload_success_timestamp: IntGauge,
    /// 1 when the file changes keys that apply only at the next start.
    pub restart_required: IntGauge,
}

impl ConfigMetrics {
    pub fn new(registry: &Registry) -> Result<ConfigMetrics, prometheus::Error> {
        let m = ConfigMetrics {
            reloads: IntCounterVec::new(
                Opts::new(
                    "nodens_config_reloads_total",
                    "Config reloads (SIGHUP or a changed file), by result",
                ),
                &["result"],
            )?,
            last_reload_successful: IntGauge::new(
                "nodens_config_last_reload_successful",
                "1 when the last config reload applied or found nothing to change, 0 when it was rejected",
            )?,
            last_reload_success_timestamp: IntGauge::new(
                "nodens_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load (start-up or reload)",
            )?,
            restart_required: IntGauge::new(
                "nodens_config_restart_required",
                "1 when the config file changes keys that apply only at the next start",
            )?,
        };
        for result in ["applied", "unchanged", "rejected"] {
            m.reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.last_reload_successful.clone()))?;
        registry.register(Box::new(m.last_reload_success_timestamp.clone()))?;
        registry.register(Box::new(m.restart_required.clone()))?;
        Ok(m)
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
    pub protection: ProtectionMetrics,
    pub config: ConfigMetrics,
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
        let protection = ProtectionMetrics::new(&registry)?;
        let config = ConfigMetrics::new(&registry)?;
        let shortcuts = IntCounterVec::new(
            Opts::new(
                "nodens_shortcut_walks_total",
                "Search-path walks by outcome (where the name was found)",
            ),
            &["outcome"],
        )?;
        let warms = IntCounter::new(
            "nodens_shortcut_warms_total",
            "Bare names looked up ahead of the client",
        )?;
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
            protection,
            config,
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
