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
    pub tcp: TcpConfig,
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub cluster: ClusterConfig,
    pub search: SearchConfig,
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
    /// Cache capacity in bytes (entries are weighed by their encoded size).
    pub max_bytes: u64,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub min_negative_ttl: u32,
    pub max_negative_ttl: u32,
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
            tcp: TcpConfig::default(),
            cache: CacheConfig::default(),
            upstream: UpstreamConfig::default(),
            cluster: ClusterConfig::default(),
            search: SearchConfig::default(),
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
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            timeout: Duration::from_secs(1),
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
        let k = &self.cluster;
        let valid_domain = !k.domain.is_empty()
            && k.domain.len() <= 200
            && k.domain.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_domain {
            return Err(invalid("cluster.domain", &k.domain, "must be a DNS name such as cluster.local"));
        }
        if k.source == SourceKind::Static && k.static_file.is_none() {
            return Err(invalid(
                "cluster.static_file",
                &k.static_file,
                "is required with cluster.source = \"static\" (or pass --cluster-state FILE)",
            ));
        }
        if k.static_poll_interval < Duration::from_millis(10) {
            return Err(invalid("cluster.static_poll_interval", k.static_poll_interval, "must be at least 10ms"));
        }
        for (key, ttl) in [("cluster.service_ttl", k.service_ttl), ("cluster.endpoint_ttl", k.endpoint_ttl)] {
            if ttl > 86400 {
                return Err(invalid(key, ttl, "must be at most 86400"));
            }
        }
        if !(1..=15).contains(&self.search.ndots) {
            return Err(invalid("search.ndots", self.search.ndots, "must be between 1 and 15 (resolv.conf's range)"));
        }
        for d in self.search.domains.iter().chain(&self.search.extra_domains) {
            let ok = d.len() <= 200 && d.trim_end_matches('.').split('.').all(|l| !l.is_empty() && l.len() <= 63);
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
            std::fs::read_to_string(&self.upstream.resolv_conf).map(|t| resolv_conf_search(&t)).unwrap_or_default()
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
        ];
        for (text, needles) in cases {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
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
        assert_eq!(resolv_conf_search("domain x.y\nsearch c.d e.f\n"), vec!["c.d".to_string(), "e.f".to_string()]);
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
