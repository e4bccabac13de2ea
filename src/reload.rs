//! Config reload without a restart: on SIGHUP, or when the config file's
//! content changes (a ConfigMap update), the config is read again, validated,
//! and what can change while serving is applied; an invalid config is
//! rejected whole, with a log line and a metric, and the running one stays.
//!
//! Owns: reading the config again (the file plus the command-line overrides
//! on top of it), the split of keys into live and restart-only, the reload
//! metrics and the file watch. Must not: rebind sockets, resize the cache or
//! touch its entries, or stop a query: the pipeline swaps its stages
//! (`Pipeline::replace_live`) and retunes the cache and the shaper in place.
//!
//! A key is *live* when a reload applies it (the ACL, the upstreams and their
//! shaping, TTL bounds, serve-stale, the search shortcut, the cluster zone's
//! TTLs); every other key is *restart-only*: a changed one is logged, counted
//! in `nodens_config_restart_required`, and runs on at its old value. The
//! running config is therefore the old one with the file's live keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::metrics::ConfigMetrics;
use crate::pipeline::Pipeline;

/// Where a serving nodens reads its config again: the file, if any, with the
/// command-line overrides applied on top of it, as at start.
pub struct ConfigSource {
    path: Option<PathBuf>,
    /// The config when there is no file (the embedded defaults, or what a test built).
    base: Config,
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// The file's bytes when it was last read, to tell a change.
    seen: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource").field("path", &self.path).finish()
    }
}

impl ConfigSource {
    /// The file at `path` (None: the embedded defaults), then `overrides`.
    pub fn new(path: Option<PathBuf>, overrides: impl Fn(&mut Config) + Send + Sync + 'static) -> ConfigSource {
        ConfigSource {
            path,
            base: Config::default(),
            overrides: Box::new(overrides),
            seen: Mutex::new(None),
        }
    }

    /// A config that never changes (no file): reloads find nothing to do.
    pub fn fixed(config: Config) -> ConfigSource {
        ConfigSource {
            path: None,
            base: config,
            overrides: Box::new(|_| {}),
            seen: Mutex::new(None),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads, overrides and validates the config. The bytes read are
    /// remembered: `changed` compares the file against them.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.path {
            None => self.base.clone(),
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.clone());
                let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: format!("not UTF-8: {e}"),
                })?;
                Config::from_toml(&text, &path.display().to_string())?
            }
        };
        (self.overrides)(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Whether the file's content differs from what `load` last read. An
    /// unreadable file is no change: a ConfigMap update swaps a symlink, and
    /// a read in that instant must not count as a (rejected) new config.
    pub fn changed(&self) -> bool {
        let Some(path) = &self.path else { return false };
        let Ok(bytes) = std::fs::read(path) else { return false };
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).as_deref() != Some(&bytes[..])
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file says what runs already (restart-only keys aside).
    Unchanged { restart: Vec<&'static str> },
    /// `changed` live keys now apply; `restart` keys differ but wait for a restart.
    Applied {
        changed: Vec<&'static str>,
        restart: Vec<&'static str>,
    },
    /// Invalid: nothing applied; the reason names the key and value.
    Rejected(String),
}

/// Lists every config key once, as live (applied by a reload) or restart
/// (read at start only), and derives from the list the comparison of two
/// configs and the merge of a file's live keys into the running config.
macro_rules! keys {
    ($($name:literal: $kind:ident $($field:ident).+;)*) => {
        /// The keys whose values differ between `a` and `b`, each with whether a reload applies it.
        fn differences(a: &Config, b: &Config) -> Vec<(&'static str, bool)> {
            let mut out = Vec::new();
            $(
                if a.$($field).+ != b.$($field).+ {
                    out.push(($name, keys!(@live $kind)));
                }
            )*
            out
        }

        /// `running` with the live keys of `file`: what runs after a reload.
        fn merge_live(running: &Config, file: &Config) -> Config {
            let mut merged = running.clone();
            $( keys!(@take $kind, merged, file, $($field).+); )*
            merged
        }

        #[cfg(test)]
        const KEYS: &[(&str, bool)] = &[$(($name, keys!(@live $kind))),*];
    };
    (@live live) => { true };
    (@live restart) => { false };
    (@take live, $into:ident, $from:ident, $($field:ident).+) => { $into.$($field).+ = $from.$($field).+.clone(); };
    (@take restart, $into:ident, $from:ident, $($field:ident).+) => {};
}

keys! {
    "listen": restart listen;
    "admin": restart admin;
    "allow": live allow;
    "workers": restart workers;
    "max_inflight": restart max_inflight;
    "edns_udp_size": restart edns_udp_size;
    "shutdown_grace": live shutdown_grace;
    "config_poll_interval": live config_poll_interval;
    "tcp.max_connections": restart tcp.max_connections;
    "tcp.idle_timeout": restart tcp.idle_timeout;
    "tcp.max_message_size": restart tcp.max_message_size;
    "cache.max_bytes": restart cache.max_bytes;
    "cache.min_ttl": live cache.min_ttl;
    "cache.max_ttl": live cache.max_ttl;
    "cache.min_negative_ttl": live cache.min_negative_ttl;
    "cache.max_negative_ttl": live cache.max_negative_ttl;
    "cache.stale_ttl": live cache.stale_ttl;
    "cache.stale_answer_ttl": live cache.stale_answer_ttl;
    "cache.prefetch": restart cache.prefetch;
    "upstream.servers": live upstream.servers;
    "upstream.resolv_conf": live upstream.resolv_conf;
    "upstream.timeout": live upstream.timeout;
    "upstream.qps": live upstream.qps;
    "upstream.burst": live upstream.burst;
    "upstream.max_inflight": live upstream.max_inflight;
    "upstream.per_client_qps": live upstream.per_client_qps;
    "upstream.per_client_burst": live upstream.per_client_burst;
    "upstream.queue_wait": live upstream.queue_wait;
    "upstream.queue_size": live upstream.queue_size;
    "cluster.source": restart cluster.source;
    "cluster.domain": restart cluster.domain;
    "cluster.static_file": restart cluster.static_file;
    "cluster.static_poll_interval": restart cluster.static_poll_interval;
    "cluster.kubeconfig": restart cluster.kubeconfig;
    "cluster.service_ttl": live cluster.service_ttl;
    "cluster.endpoint_ttl": live cluster.endpoint_ttl;
    "cluster.negative_ttl": live cluster.negative_ttl;
    "cluster.pods": live cluster.pods;
    "cluster.reverse_cidrs": live cluster.reverse_cidrs;
    "cluster.cluster_upstream": live cluster.cluster_upstream;
    "cluster.hub": restart cluster.hub;
    "cluster.hub_token": restart cluster.hub_token;
    "cluster.hub_timeout": restart cluster.hub_timeout;
    "cluster.hub_fallback": restart cluster.hub_fallback;
    "cluster.hub_fallback_after": restart cluster.hub_fallback_after;
    "cluster.hub_fallback_jitter": restart cluster.hub_fallback_jitter;
    "cluster.hub_ca": restart cluster.hub_ca;
    "cluster.hub_server_name": restart cluster.hub_server_name;
    "search.shortcut": live search.shortcut;
    "search.ndots": live search.ndots;
    "search.domains": live search.domains;
    "search.extra_domains": live search.extra_domains;
    "node.setup_interface": restart node.setup_interface;
    "node.interface": restart node.interface;
    "node.addresses": restart node.addresses;
    "node.notrack": restart node.notrack;
    "node.probe_file": restart node.probe_file;
    "hub": restart hub;
}

/// Applies reloads to a running pipeline. One reload at a time.
pub struct Reloader {
    source: ConfigSource,
    pipeline: Arc<Pipeline>,
    /// The config in effect: the start-up one with every applied reload's live keys.
    running: Mutex<Config>,
    metrics: ConfigMetrics,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("source", &self.source).finish()
    }
}

impl Reloader {
    /// `running` is the config the pipeline was built from (start-up counts as a successful load).
    pub fn new(source: ConfigSource, pipeline: Arc<Pipeline>, running: Config) -> Reloader {
        let metrics = pipeline.metrics().config.clone();
        metrics.last_reload_successful.set(1);
        metrics.last_reload_success_timestamp.set(unix_now());
        Reloader {
            source,
            pipeline,
            running: Mutex::new(running),
            metrics,
        }
    }

    /// The config in effect now.
    pub fn running(&self) -> Config {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the config again and applies its live keys. Never fails the
    /// process: a bad config is reported and the running one stays.
    pub fn reload(&self) -> Reload {
        // Held to the end: two reloads (a signal and the file watch) never interleave.
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.source.load().and_then(|file| self.apply(&mut running, &file));
        let m = &self.metrics;
        let (changed, restart) = match outcome {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                m.reloads.with_label_values(&["rejected"]).inc();
                m.last_reload_successful.set(0);
                return Reload::Rejected(e.to_string());
            }
        };
        if !restart.is_empty() {
            tracing::warn!(keys = %restart.join(","), "config keys changed that apply only at the next start");
        }
        m.restart_required.set(i64::from(!restart.is_empty()));
        m.last_reload_successful.set(1);
        m.last_reload_success_timestamp.set(unix_now());
        if changed.is_empty() {
            m.reloads.with_label_values(&["unchanged"]).inc();
            return Reload::Unchanged { restart };
        }
        tracing::info!(changed = %changed.join(","), "config reloaded");
        m.reloads.with_label_values(&["applied"]).inc();
        Reload::Applied { changed, restart }
    }

    /// Puts the live keys of `file` (valid) in place over `running`; returns
    /// the live keys that changed and the restart-only keys that differ.
    fn apply(
        &self,
        running: &mut Config,
        file: &Config,
    ) -> Result<(Vec<&'static str>, Vec<&'static str>), ConfigError> {
        let differ = differences(running, file);
        let changed: Vec<&'static str> = differ.iter().filter(|(_, live)| *live).map(|(k, _)| *k).collect();
        let restart: Vec<&'static str> = differ.iter().filter(|(_, live)| !*live).map(|(k, _)| *k).collect();
        let next = merge_live(running, file);
        // Checked again as a whole: the file was valid with its own
        // restart-only values, the merge must be with the running ones.
        next.validate()?;
        // Always rebuilt, even with no key changed: the default upstreams
        // and search domains come from resolv.conf, which may have changed.
        let servers = next.upstream_servers()?;
        let p = &self.pipeline;
        let live = crate::app::compose_live(&next, servers, p.metrics(), p.index(), Some(&p.live()));
        let c = &next.cache;
        p.cache()
            .retune(crate::app::ttl_limits(c), c.stale_ttl, c.stale_answer_ttl);
        p.shaper().retune(crate::app::shaper_settings(&next.upstream));
        p.replace_live(live);
        *running = next;
        Ok((changed, restart))
    }

    /// Reloads whenever the file's content changes, checked every
    /// `config_poll_interval` (of the running config), until `shutdown`.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.source.path().is_none() {
            return;
        }
        loop {
            let every = self.running().config_poll_interval;
            // Off: look again later whether a SIGHUP turned it on.
            let wait = if every.is_zero() { Duration::from_secs(1) } else { every };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::front::tcp::stopped(&mut shutdown) => return,
            }
            if every.is_zero() {
                continue;
            }
            let this = self.clone();
            // Reading and validating a file is blocking work: off the runtime's workers.
            let check = move || this.source.changed().then(|| this.reload());
            match tokio::task::spawn_blocking(check).await {
                Ok(Some(outcome)) => tracing::debug!(?outcome, "config file changed"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "config reload task failed"),
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_key_is_classified() {
        // config/nodens.toml documents every key (a config test holds it to the defaults).
        let text = include_str!("../config/nodens.toml");
        let doc: toml::Table = toml::from_str(text).expect("the shipped config parses");
        let mut documented = Vec::new();
        for (key, value) in &doc {
            match value {
                toml::Value::Table(t) if key != "hub" => documented.extend(t.keys().map(|k| format!("{key}.{k}"))),
                _ => documented.push(key.clone()),
            }
        }
        let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        for key in &documented {
            // Commented-out keys (static_file, kubeconfig, probe_file) are listed too; see below.
            assert!(
                known.contains(&key.as_str()),
                "{key} is not classified live or restart in reload.rs"
            );
        }
        for key in ["cluster.static_file", "cluster.kubeconfig", "node.probe_file"] {
            assert!(known.contains(&key), "{key}");
        }
    }

    #[test]
    fn merging_takes_live_keys_only() {
        let running = Config::default();
        let mut file = Config::default();
        file.upstream.qps = 10;
        file.search.ndots = 2;
        file.listen = vec!["127.0.0.1:1053".parse().unwrap()];
        file.cache.max_bytes = 1 << 20;
        let mut keys = differences(&running, &file);
        keys.sort();
        assert_eq!(
            keys,
            [
                ("cache.max_bytes", false),
                ("listen", false),
                ("search.ndots", true),
                ("upstream.qps", true)
            ]
        );
        let merged = merge_live(&running, &file);
        assert_eq!(merged.upstream.qps, 10);
        assert_eq!(merged.search.ndots, 2);
        assert_eq!(merged.listen, running.listen, "listen waits for a restart");
        assert_eq!(merged.cache.max_bytes, running.cache.max_bytes);
        let mut every_live = Config {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        every_live.cluster.service_ttl = 7;
        every_live.search.extra_domains = vec!["corp.example".into()];
        assert_eq!(merge_live(&running, &every_live), every_live);
    }

    /// Fails to compile when a config field is added: classify it in `keys!` too.
    #[allow(dead_code)]
    fn every_field_is_in_the_key_list(c: &Config) {
        use crate::config::{CacheConfig, ClusterConfig, NodeConfig, SearchConfig, TcpConfig, UpstreamConfig};
        #[rustfmt::skip]
        let Config {
            listen: _, admin: _, allow: _, workers: _, max_inflight: _, edns_udp_size: _, shutdown_grace: _,
            config_poll_interval: _, tcp, cache, upstream, cluster, search, node, hub: _,
        } = c;
        let TcpConfig {
            max_connections: _,
            idle_timeout: _,
            max_message_size: _,
        } = tcp;
        #[rustfmt::skip]
        let CacheConfig {
            max_bytes: _, min_ttl: _, max_ttl: _, min_negative_ttl: _, max_negative_ttl: _, stale_ttl: _,
            stale_answer_ttl: _, prefetch: _,
        } = cache;
        #[rustfmt::skip]
        let UpstreamConfig {
            servers: _, resolv_conf: _, timeout: _, qps: _, burst: _, max_inflight: _, per_client_qps: _,
            per_client_burst: _, queue_wait: _, queue_size: _,
        } = upstream;
        #[rustfmt::skip]
        let ClusterConfig {
            source: _, domain: _, static_file: _, static_poll_interval: _, kubeconfig: _, service_ttl: _,
            endpoint_ttl: _, negative_ttl: _, pods: _, reverse_cidrs: _, cluster_upstream: _, hub: _, hub_token: _,
            hub_timeout: _, hub_fallback: _, hub_fallback_after: _, hub_fallback_jitter: _, hub_ca: _,
            hub_server_name: _,
        } = cluster;
        let SearchConfig {
            shortcut: _,
            ndots: _,
            domains: _,
            extra_domains: _,
        } = search;
        let NodeConfig {
            setup_interface: _,
            interface: _,
            addresses: _,
            notrack: _,
            probe_file: _,
        } = node;
    }
}
