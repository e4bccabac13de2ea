//! Configuration: one TOML file, every key with an embedded default.
//!
//! Owns: the keys, their defaults, validation, and the resolution of the
//! default upstreams from resolv.conf. Must not: bind sockets or start
//! anything (linkerd's `Config` → `App::build` split), so that every rule here
//! is testable without touching the machine. `config/nodens.toml` documents
//! every key; a test checks it parses to exactly these defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// The port every DNS upstream listens on unless told otherwise.
pub const DNS_PORT: u16 = 53;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}` = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(key: &'static str, value: impl std::fmt::Debug, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to answer DNS on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// The admin HTTP server: /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    /// Client source networks allowed to query; others get REFUSED.
    pub allow: Vec<IpNet>,
    /// UDP worker threads per listen address; 0 means one per CPU.
    pub workers: usize,
    /// Queries on the miss path at once (admission control); more get SERVFAIL.
    pub max_inflight: usize,
    /// The EDNS UDP payload size we advertise and accept at most (RFC 6891 §6.2.5).
    pub edns_udp_size: u16,
    /// How long in-flight queries may take to finish after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// How often the config file is checked for changes (a ConfigMap
    /// update), which are then applied as on SIGHUP; "0s": SIGHUP only.
    #[serde(deserialize_with = "duration")]
    pub config_poll_interval: Duration,
    pub tcp: TcpConfig,
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub cluster: ClusterConfig,
    pub search: SearchConfig,
    pub node: NodeConfig,
    /// `nodens hub` only: the process that watches the API server for every node (DESIGN §5).
    pub hub: HubConfig,
}

/// The hub process (`nodens hub`, src/hub/): its listener and its bounds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Where node agents subscribe (HTTP/2 or HTTP/1.1, `GET /v1/index`).
    pub listen: SocketAddr,
    /// The hub's own /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    /// Where the hub's index comes from: kubernetes, static or demo (the `[cluster]` keys say how).
    pub source: SourceKind,
    /// Shared secret agents must send as `Authorization: Bearer`; empty: no auth.
    pub token: String,
    /// Deltas kept so a reconnecting agent gets only what it missed; past them it gets a snapshot.
    pub history: usize,
    /// Bytes of deltas kept at most.
    pub history_bytes: usize,
    /// A subscriber with nothing new gets a heartbeat this often.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Open streams at once; more wait in the kernel's backlog.
    pub max_subscribers: usize,
    /// PEM certificate chain served to agents; with `tls_key`, the hub speaks
    /// HTTP/2 over TLS instead of h2c. Both or neither.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8053),
            admin: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9154),
            source: SourceKind::Kubernetes,
            token: String::new(),
            history: 10_000,
            history_bytes: 64 << 20,
            heartbeat: Duration::from_secs(5),
            max_subscribers: 10_000,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// What a DaemonSet agent sets up on its node (src/node/).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Create the dummy interface holding `addresses` before binding (`--setup-interface`).
    pub setup_interface: bool,
    pub interface: String,
    /// The node-local addresses the interface holds (NodeLocal DNSCache's 169.254.20.10).
    pub addresses: Vec<IpAddr>,
    /// The conntrack bypass for DNS on those addresses, installed with the interface.
    pub notrack: NotrackMode,
    /// Where this process writes the address of its own probe listener
    /// (`nodens probe`); unset: none, probes use `admin`.
    pub probe_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            setup_interface: false,
            interface: "nodelocaldns".into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10))],
            notrack: NotrackMode::Auto,
            probe_file: None,
        }
    }
}

/// How the NOTRACK rules are installed (src/node/notrack.rs).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotrackMode {
    /// nftables (over netlink) if the kernel's nf_tables answers, else iptables.
    Auto,
    Nftables,
    Iptables,
    Off,
}

/// The search-path shortcut (DESIGN §3).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub shortcut: crate::stage::shortcut::Mode,
    /// Pods' `ndots` (Kubernetes sets 5): names with fewer dots get the search list.
    pub ndots: u8,
    /// The node's search domains (H in DESIGN §3); empty means the `search` line of `upstream.resolv_conf`.
    pub domains: Vec<String>,
    /// Search domains some pods add with `dnsConfig.searches`, walked after `domains`.
    pub extra_domains: Vec<String>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            shortcut: crate::stage::shortcut::Mode::Cname,
            ndots: 5,
            domains: Vec::new(),
            extra_domains: Vec::new(),
        }
    }
}

/// Where the cluster index comes from (DESIGN §4).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// No cluster zone: cluster names go through the cache and upstream like any other.
    None,
    /// The small example cluster built into the binary (config/example-cluster.yaml), for trying nodens out.
    Demo,
    /// A `kubectl get svc,endpointslices -A -o yaml` dump (`static_file`), reloaded when it changes.
    Static,
    /// A direct watch of the API server (`kubeconfig`, or in-cluster config).
    Kubernetes,
    /// A subscription to `nodens hub` (`hub` addresses): no API server access needed.
    Hub,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PodsMode {
    Disabled,
    /// Answer `a-b-c-d.<ns>.pod.<domain>` from the name alone, as kube-dns does.
    Insecure,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub source: SourceKind,
    /// The cluster domain answered authoritatively.
    pub domain: String,
    pub static_file: Option<PathBuf>,
    /// How often the static file is checked for changes.
    #[serde(deserialize_with = "duration")]
    pub static_poll_interval: Duration,
    /// Kubeconfig for the `kubernetes` source; unset means in-cluster config, then the default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// TTL of ClusterIP, ExternalName, pod and service PTR records.
    pub service_ttl: u32,
    /// TTL of headless endpoint records.
    pub endpoint_ttl: u32,
    /// SOA TTL and MINIMUM of the zone: how long a negative answer is cached by clients.
    pub negative_ttl: u32,
    pub pods: PodsMode,
    /// Service and pod CIDRs whose reverse (PTR) zones are answered authoritatively.
    pub reverse_cidrs: Vec<IpNet>,
    /// Where cluster-zone queries go until the index first syncs (the old kube-dns); empty means SERVFAIL.
    #[serde(deserialize_with = "servers")]
    pub cluster_upstream: Vec<SocketAddr>,
    /// `source = "hub"`: hub addresses ("IP:port"), tried in turn from a random one.
    pub hub: Vec<SocketAddr>,
    /// Sent as `Authorization: Bearer`; empty: none.
    pub hub_token: String,
    /// No frame from the hub (heartbeats included) for this long: reconnect, to the next address.
    #[serde(deserialize_with = "duration")]
    pub hub_timeout: Duration,
    /// With no hub for `hub_fallback_after` plus a random share of
    /// `hub_fallback_jitter`, watch the API server directly until a hub answers.
    pub hub_fallback: bool,
    #[serde(deserialize_with = "duration")]
    pub hub_fallback_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub hub_fallback_jitter: Duration,
    /// PEM CA bundle: set, the agent connects to its hubs over TLS and
    /// trusts a hub certificate only if it chains to one of these.
    pub hub_ca: Option<PathBuf>,
    /// The name the hub's certificate must carry (hub addresses are IP:port).
    pub hub_server_name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            source: SourceKind::Demo,
            domain: "cluster.local".into(),
            static_file: None,
            static_poll_interval: Duration::from_secs(1),
            kubeconfig: None,
            service_ttl: 30,
            endpoint_ttl: 5,
            negative_ttl: 5,
            pods: PodsMode::Insecure,
            reverse_cidrs: Vec::new(),
            cluster_upstream: Vec::new(),
            hub: Vec::new(),
            hub_token: String::new(),
            hub_timeout: Duration::from_secs(15),
            hub_fallback: false,
            hub_fallback_after: Duration::from_secs(120),
            hub_fallback_jitter: Duration::from_secs(300),
            hub_ca: None,
            hub_server_name: "nodens-hub.kube-system.svc".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Open client connections at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    /// A connection with no query for this long is closed (RFC 7766 §6.2.3).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Largest query accepted over TCP; a larger length prefix closes the connection.
    pub max_message_size: u16,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache capacity in bytes (an entry weighs the heap it takes, bookkeeping included).
    pub max_bytes: u64,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub min_negative_ttl: u32,
    pub max_negative_ttl: u32,
    /// How long past expiry an answer is kept to serve stale when the
    /// upstream fails or the shaper sheds (RFC 8767); 0 turns serve-stale off.
    #[serde(deserialize_with = "duration")]
    pub stale_ttl: Duration,
    /// TTL of stale answers, seconds (RFC 8767 §4: 30).
    pub stale_answer_ttl: u32,
    /// Refresh an entry in the background when it is asked in the last 10% of its TTL.
    pub prefetch: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Upstream servers ("IP" or "IP:port"); empty means the nameservers of `resolv_conf`.
    #[serde(deserialize_with = "servers")]
    pub servers: Vec<SocketAddr>,
    /// Where the default upstreams come from.
    pub resolv_conf: PathBuf,
    /// Per-try timeout; a query that times out moves on to the next server.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Packets per second sent upstream at most (a UDP query 1, a TCP query 5).
    pub qps: u32,
    /// Packets that may go at once above the rate (the token bucket's size).
    pub burst: u32,
    /// Upstream queries in flight at once.
    pub max_inflight: usize,
    /// Each client address's share of `qps`; 0 means no shares.
    pub per_client_qps: u32,
    pub per_client_burst: u32,
    /// Longest a miss waits for a token or an in-flight slot before it is
    /// answered stale or SERVFAIL.
    #[serde(deserialize_with = "duration")]
    pub queue_wait: Duration,
    /// Misses waiting at once; the newest beyond it is shed at once.
    pub queue_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 5353)],
            admin: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9153),
            allow: vec![
                "127.0.0.0/8".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ],
            workers: 0,
            max_inflight: 4096,
            edns_udp_size: 1232,
            shutdown_grace: Duration::from_secs(5),
            config_poll_interval: Duration::from_secs(5),
            tcp: TcpConfig::default(),
            cache: CacheConfig::default(),
            upstream: UpstreamConfig::default(),
            cluster: ClusterConfig::default(),
            search: SearchConfig::default(),
            node: NodeConfig::default(),
            hub: HubConfig::default(),
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(10),
            max_message_size: 4096,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 64 << 20,
            min_ttl: 0,
            max_ttl: 86400,
            min_negative_ttl: 30,
            max_negative_ttl: 3600,
            stale_ttl: Duration::from_secs(3600),
            stale_answer_ttl: 30,
            prefetch: true,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            timeout: Duration::from_secs(1),
            qps: 800,
            burst: 100,
            max_inflight: 150,
            per_client_qps: 100,
            per_client_burst: 100,
            queue_wait: Duration::from_millis(200),
            queue_size: 1000,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"200ms\" or \"5s\"")))
}

fn servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_server(s).map_err(serde::de::Error::custom))
        .collect()
}

/// Parses an upstream as "IP", "IP:port" or "[IPv6]:port"; the port defaults to 53.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
        .map_err(|_| format!("invalid upstream address {s:?}; write \"IP\" or \"IP:port\""))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML (`origin` names it in errors) and validates the result.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules no type expresses. Call again after CLI overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", &self.listen, "at least one listen address is needed"));
        }
        if self.workers > 256 {
            return Err(invalid("workers", self.workers, "at most 256 (0 means one per CPU)"));
        }
        if self.max_inflight == 0 {
            return Err(invalid("max_inflight", self.max_inflight, "must be at least 1"));
        }
        if !(512..=4096).contains(&self.edns_udp_size) {
            return Err(invalid(
                "edns_udp_size",
                self.edns_udp_size,
                "must be between 512 and 4096",
            ));
        }
        let poll = self.config_poll_interval;
        if !poll.is_zero() && !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&poll) {
            return Err(invalid(
                "config_poll_interval",
                poll,
                "must be 0s (off) or between 10ms and 1h",
            ));
        }
        if self.shutdown_grace > Duration::from_secs(600) {
            return Err(invalid("shutdown_grace", self.shutdown_grace, "must be at most 10m"));
        }
        if self.tcp.max_connections == 0 {
            return Err(invalid(
                "tcp.max_connections",
                self.tcp.max_connections,
                "must be at least 1",
            ));
        }
        if self.tcp.idle_timeout.is_zero() {
            return Err(invalid(
                "tcp.idle_timeout",
                self.tcp.idle_timeout,
                "must be more than 0",
            ));
        }
        if self.tcp.max_message_size < 512 {
            return Err(invalid(
                "tcp.max_message_size",
                self.tcp.max_message_size,
                "must be at least 512",
            ));
        }
        let c = &self.cache;
        if c.min_ttl > c.max_ttl {
            return Err(invalid(
                "cache.min_ttl",
                c.min_ttl,
                format!("must not exceed cache.max_ttl ({})", c.max_ttl),
            ));
        }
        if c.min_negative_ttl > c.max_negative_ttl {
            return Err(invalid(
                "cache.min_negative_ttl",
                c.min_negative_ttl,
                format!("must not exceed cache.max_negative_ttl ({})", c.max_negative_ttl),
            ));
        }
        if c.max_bytes < 1 << 16 {
            return Err(invalid("cache.max_bytes", c.max_bytes, "must be at least 65536"));
        }
        let t = self.upstream.timeout;
        if t < Duration::from_millis(10) || t > Duration::from_secs(30) {
            return Err(invalid("upstream.timeout", t, "must be between 10ms and 30s"));
        }
        self.validate_protection()?;
        self.validate_hub_source()?;
        let n = &self.node;
        let valid_ifname = !n.interface.is_empty()
            && n.interface.len() <= 15
            && n.interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_ifname {
            return Err(invalid(
                "node.interface",
                &n.interface,
                "must be 1-15 letters, digits, '-', '_' or '.'",
            ));
        }
        if n.setup_interface && n.addresses.is_empty() {
            return Err(invalid(
                "node.addresses",
                &n.addresses,
                "at least one address is needed with node.setup_interface",
            ));
        }
        let k = &self.cluster;
        let valid_domain = !k.domain.is_empty()
            && k.domain.len() <= 200
            && k.domain
                .trim_end_matches('.')
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid_domain {
            return Err(invalid(
                "cluster.domain",
                &k.domain,
                "must be a DNS name such as cluster.local",
            ));
        }
        if k.source == SourceKind::Static && k.static_file.is_none() {
            return Err(invalid(
                "cluster.static_file",
                &k.static_file,
                "is required with cluster.source = \"static\" (or pass --cluster-state FILE)",
            ));
        }
        if k.static_poll_interval < Duration::from_millis(10) {
            return Err(invalid(
                "cluster.static_poll_interval",
                k.static_poll_interval,
                "must be at least 10ms",
            ));
        }
        for (key, ttl) in [
            ("cluster.service_ttl", k.service_ttl),
            ("cluster.endpoint_ttl", k.endpoint_ttl),
        ] {
            if ttl > 86400 {
                return Err(invalid(key, ttl, "must be at most 86400"));
            }
        }
        if !(1..=15).contains(&self.search.ndots) {
            return Err(invalid(
                "search.ndots",
                self.search.ndots,
                "must be between 1 and 15 (resolv.conf's range)",
            ));
        }
        for d in self.search.domains.iter().chain(&self.search.extra_domains) {
            let ok = d.len() <= 200
                && d.trim_end_matches('.')
                    .split('.')
                    .all(|l| !l.is_empty() && l.len() <= 63);
            if !ok {
                return Err(invalid("search.domains", d, "must be DNS names such as corp.example"));
            }
        }
        for s in &self.upstream.servers {
            if s.port() == 0 || s.ip().is_unspecified() {
                return Err(invalid("upstream.servers", s, "needs a concrete address and port"));
            }
        }
        Ok(())
    }

    /// The `hub` source's keys (DESIGN §5).
    fn validate_hub_source(&self) -> Result<(), ConfigError> {
        let k = &self.cluster;
        if k.source == SourceKind::Hub && k.hub.is_empty() {
            return Err(invalid(
                "cluster.hub",
                &k.hub,
                "needs at least one hub address with cluster.source = \"hub\" (or pass --hub ADDR)",
            ));
        }
        if let Some(bad) = k.hub.iter().find(|a| a.port() == 0 || a.ip().is_unspecified()) {
            return Err(invalid("cluster.hub", bad, "needs a concrete address and port"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&k.hub_timeout) {
            return Err(invalid("cluster.hub_timeout", k.hub_timeout, "must be 1s to 10m"));
        }
        if k.hub_fallback_jitter > Duration::from_secs(3600) {
            let jitter = k.hub_fallback_jitter;
            return Err(invalid("cluster.hub_fallback_jitter", jitter, "must be at most 1h"));
        }
        if k.hub_ca.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid(
                "cluster.hub_ca",
                &k.hub_ca,
                "must be a file path (unset: no TLS)",
            ));
        }
        if rustls_pki_types::ServerName::try_from(k.hub_server_name.as_str()).is_err() {
            return Err(invalid(
                "cluster.hub_server_name",
                &k.hub_server_name,
                "must be a DNS name or an IP address (the name in the hub's certificate)",
            ));
        }
        Ok(())
    }

    /// Checks the keys `nodens hub` uses (its `[hub]` section and its source).
    pub fn validate_hub(&self) -> Result<(), ConfigError> {
        let h = &self.hub;
        match h.source {
            SourceKind::Kubernetes | SourceKind::Demo => {}
            SourceKind::Static if self.cluster.static_file.is_some() => {}
            SourceKind::Static => {
                return Err(invalid(
                    "cluster.static_file",
                    &self.cluster.static_file,
                    "is required with hub.source = \"static\" (or pass --cluster-state FILE)",
                ))
            }
            other => return Err(invalid("hub.source", other, "must be kubernetes, static or demo")),
        }
        if h.history == 0 || h.history > 10_000_000 {
            return Err(invalid("hub.history", h.history, "must be between 1 and 10000000"));
        }
        if h.history_bytes < 1 << 16 {
            return Err(invalid("hub.history_bytes", h.history_bytes, "must be at least 65536"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&h.heartbeat) {
            return Err(invalid("hub.heartbeat", h.heartbeat, "must be between 100ms and 60s"));
        }
        if h.max_subscribers == 0 {
            return Err(invalid("hub.max_subscribers", h.max_subscribers, "must be at least 1"));
        }
        for (key, path) in [("hub.tls_cert", &h.tls_cert), ("hub.tls_key", &h.tls_key)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key, path, "must be a file path (unset: no TLS)"));
            }
        }
        match (&h.tls_cert, &h.tls_key) {
            (Some(_), None) => return Err(invalid("hub.tls_key", &h.tls_key, "is required with hub.tls_cert")),
            (None, Some(_)) => return Err(invalid("hub.tls_cert", &h.tls_cert, "is required with hub.tls_key")),
            _ => {}
        }
        Ok(())
    }

    /// The upstream shaper and serve-stale keys (DESIGN §6, §7).
    fn validate_protection(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        if !(1..=1_000_000).contains(&u.qps) {
            return Err(invalid("upstream.qps", u.qps, "must be between 1 and 1000000"));
        }
        if !(5..=1_000_000).contains(&u.burst) {
            return Err(invalid(
                "upstream.burst",
                u.burst,
                "must be between 5 (a TCP query costs 5 packets) and 1000000",
            ));
        }
        if !(1..=65_535).contains(&u.max_inflight) {
            return Err(invalid(
                "upstream.max_inflight",
                u.max_inflight,
                "must be between 1 and 65535",
            ));
        }
        if u.per_client_qps > u.qps {
            return Err(invalid(
                "upstream.per_client_qps",
                u.per_client_qps,
                format!("must not exceed upstream.qps ({})", u.qps),
            ));
        }
        if u.per_client_qps > 0 && u.per_client_burst == 0 {
            return Err(invalid(
                "upstream.per_client_burst",
                u.per_client_burst,
                "must be at least 1 when upstream.per_client_qps is set",
            ));
        }
        if u.queue_wait > Duration::from_secs(10) {
            return Err(invalid("upstream.queue_wait", u.queue_wait, "must be at most 10s"));
        }
        if u.queue_size > 1_000_000 {
            return Err(invalid("upstream.queue_size", u.queue_size, "must be at most 1000000"));
        }
        let c = &self.cache;
        if c.stale_ttl > Duration::from_secs(7 * 86400) {
            return Err(invalid("cache.stale_ttl", c.stale_ttl, "must be at most 7 days"));
        }
        if !(1..=86400).contains(&c.stale_answer_ttl) {
            return Err(invalid(
                "cache.stale_answer_ttl",
                c.stale_answer_ttl,
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }

    /// The upstreams to use: the configured ones, or else the nameservers of
    /// `upstream.resolv_conf`, skipping any that is one of our own listen
    /// addresses (forwarding to ourselves would loop).
    pub fn upstream_servers(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        if !self.upstream.servers.is_empty() {
            return Ok(self.upstream.servers.clone());
        }
        let path = &self.upstream.resolv_conf;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let servers: Vec<SocketAddr> = resolv_conf_nameservers(&text)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
            .filter(|s| !self.listen.contains(s))
            .collect();
        if servers.is_empty() {
            return Err(invalid(
                "upstream.servers",
                Vec::<String>::new(),
                format!("none configured and {} names no usable nameserver", path.display()),
            ));
        }
        Ok(servers)
    }

    /// The host search domains the shortcut walks (H, then the extras): the
    /// configured ones, or the last `search`/`domain` line of resolv.conf.
    pub fn search_domains(&self) -> Vec<String> {
        let mut hosts = if self.search.domains.is_empty() {
            std::fs::read_to_string(&self.upstream.resolv_conf)
                .map(|t| resolv_conf_search(&t))
                .unwrap_or_default()
        } else {
            self.search.domains.clone()
        };
        hosts.extend(self.search.extra_domains.iter().cloned());
        hosts
    }

    /// Worker threads per listen address.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// The search list of a resolv.conf: the last `search` or `domain` line wins (resolv.conf(5)).
pub fn resolv_conf_search(text: &str) -> Vec<String> {
    let mut list = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") | Some("domain") => list = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    list
}

/// The `nameserver` lines of a resolv.conf (resolv.conf(5)); zone indices
/// and anything unparsable are skipped.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_documents_the_defaults() {
        let text = include_str!("../config/nodens.toml");
        assert_eq!(
            Config::from_toml(text, "config/nodens.toml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("", "x").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_and_value() {
        let cases: &[(&str, &[&str])] = &[
            ("listne = []", &["listne"]),
            ("[cache]\nmax_tll = 5", &["max_tll"]),
            ("edns_udp_size = 100", &["edns_udp_size", "100"]),
            ("[cache]\nmin_ttl = 10\nmax_ttl = 5", &["cache.min_ttl", "10"]),
            ("[upstream]\ntimeout = \"fast\"", &["timeout", "fast"]),
            ("[upstream]\nservers = [\"not-an-ip\"]", &["servers", "not-an-ip"]),
            ("listen = [\"127.0.0.1\"]", &["listen", "127.0.0.1"]),
            ("allow = [\"10.0.0.0/33\"]", &["allow", "10.0.0.0/33"]),
            ("[upstream]\nqps = 0", &["upstream.qps", "0"]),
            ("[upstream]\nburst = 2", &["upstream.burst", "2"]),
            ("[upstream]\nmax_inflight = 0", &["upstream.max_inflight", "0"]),
            (
                "[upstream]\nqps = 100\nper_client_qps = 200",
                &["upstream.per_client_qps", "200"],
            ),
            ("[upstream]\nper_client_burst = 0", &["upstream.per_client_burst", "0"]),
            ("[upstream]\nqueue_wait = \"1m\"", &["upstream.queue_wait", "60s"]),
            ("[cache]\nstale_answer_ttl = 0", &["cache.stale_answer_ttl", "0"]),
            ("[cache]\nstale_ttl = \"30days\"", &["cache.stale_ttl"]),
            ("[cluster]\nsource = \"hub\"", &["cluster.hub", "--hub"]),
            ("[cluster]\nhub = [\"0.0.0.0:8053\"]", &["cluster.hub", "0.0.0.0:8053"]),
            ("[cluster]\nhub_timeout = \"10ms\"", &["cluster.hub_timeout", "10ms"]),
            ("[cluster]\nhub_ca = \"\"", &["cluster.hub_ca"]),
            (
                "[cluster]\nhub_server_name = \"not a name\"",
                &["cluster.hub_server_name", "not a name"],
            ),
            ("[cluster]\nhub_server_name = \"\"", &["cluster.hub_server_name"]),
        ];
        for (text, needles) in cases {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            for n in *needles {
                assert!(err.contains(n), "{text:?}: error {err:?} does not name {n:?}");
            }
        }
    }

    #[test]
    fn hub_keys_are_checked_for_the_hub_process() {
        assert!(Config::default().validate_hub().is_ok(), "kubernetes by default");
        let cases: &[(&str, &[&str])] = &[
            ("[hub]\nsource = \"static\"", &["cluster.static_file", "--cluster-"]),
            ("[hub]\nsource = \"hub\"", &["hub.source", "Hub"]),
            ("[hub]\nhistory = 0", &["hub.history", "0"]),
            ("[hub]\nheartbeat = \"5ms\"", &["hub.heartbeat", "5ms"]),
            ("[hub]\nmax_subscribers = 0", &["hub.max_subscribers"]),
            (
                "[hub]\ntls_cert = \"/etc/hub/tls.crt\"",
                &["hub.tls_key", "hub.tls_cert"],
            ),
            (
                "[hub]\ntls_key = \"/etc/hub/tls.key\"",
                &["hub.tls_cert", "hub.tls_key"],
            ),
            ("[hub]\ntls_cert = \"\"\ntls_key = \"k\"", &["hub.tls_cert"]),
        ];
        for (text, needles) in cases {
            let config = Config::from_toml(text, "t.toml").unwrap();
            let err = config.validate_hub().unwrap_err().to_string();
            for n in *needles {
                assert!(err.contains(n), "{text:?}: error {err:?} does not name {n:?}");
            }
        }
    }

    #[test]
    fn servers_default_port_and_resolv_conf() {
        let c = Config::from_toml("[upstream]\nservers = [\"192.0.2.1\", \"[::1]:5300\"]", "t").unwrap();
        assert_eq!(
            c.upstream.servers,
            vec!["192.0.2.1:53".parse().unwrap(), "[::1]:5300".parse().unwrap()]
        );
        let text = "# c\nsearch a.b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver junk\n";
        assert_eq!(resolv_conf_search(text), vec!["a.b".to_string()]);
        assert_eq!(
            resolv_conf_search("domain x.y\nsearch c.d e.f\n"),
            vec!["c.d".to_string(), "e.f".to_string()]
        );
        assert_eq!(
            resolv_conf_nameservers(text),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]
        );
    }

    #[test]
    fn resolv_conf_skips_our_own_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 169.254.20.10\nnameserver 10.96.0.10\n").unwrap();
        let c = Config {
            listen: vec!["169.254.20.10:53".parse().unwrap()],
            upstream: UpstreamConfig {
                resolv_conf: path.clone(),
                ..UpstreamConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(c.upstream_servers().unwrap(), vec!["10.96.0.10:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 169.254.20.10\n").unwrap();
        let err = c.upstream_servers().unwrap_err().to_string();
        assert!(err.contains("upstream.servers"), "{err}");
    }
}
