//! `nodens-bench`: the DNS load generator for nodens and its peers
//! (docs/ARCHITECTURE.md, DESIGN §8). Sends a workload to any DNS server and
//! reports what came back; `nodens-bench upstream` is the authoritative
//! server the resolvers under test forward to.
//!
//! Layout:
//! - `workload`: which lookups a run makes (hit, k8s, flood, mixes), seeded.
//! - `glibc`: the search-list walk a pod's `getaddrinfo` makes.
//! - `load`: the engine: sockets, pacing, ID table, timeouts, histograms.
//! - `report`: figures, JSON and the human table.
//! - `zone`: the generated names both the bench and the upstream know.
//! - `upstream`: the bench upstream (answers, counters, rate cap).
//! - `sys`: the raw syscalls (the only `unsafe` code).
//!
//! This file parses the command line and strings those together. Nothing
//! here sends traffic anywhere but `--server` and the upstream's address.
#![forbid(unsafe_op_in_unsafe_fn)]

mod glibc;
mod load;
mod report;
mod sys;
mod upstream;
mod workload;
mod zone;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use load::{LoadSpec, Pace};
use report::{Report, Setup, Warmup};
use upstream::{Upstream, UpstreamSpec};
use workload::{Kind, Source, Workload, WorkloadSpec};
use zone::ZoneSpec;

#[derive(Parser, Debug)]
#[command(
    name = "nodens-bench",
    version,
    about = "DNS load generator: hit, k8s (glibc search-list walks) and flood workloads",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the bench zone on loopback for resolvers under test to forward to.
    Upstream(UpstreamArgs),
    /// Print the zone's cluster services as a `kubectl get svc -A -o yaml`
    /// dump, for a resolver that serves the cluster zone itself
    /// (`nodens serve --cluster-state FILE`).
    ClusterState(ClusterStateArgs),
}

/// The zone both sides generate; the bench and its upstream must agree.
#[derive(Args, Debug, Clone)]
struct ZoneArgs {
    /// External names in the zone (each with A and AAAA).
    #[arg(long, default_value_t = 10_000)]
    names: usize,
    /// Cluster namespaces ns0, ns1, …
    #[arg(long, default_value_t = 4)]
    namespaces: usize,
    /// Services per namespace svc0, svc1, …
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

impl ZoneArgs {
    fn spec(&self) -> ZoneSpec {
        ZoneSpec {
            names: self.names,
            namespaces: self.namespaces,
            services: self.services,
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct ClusterStateArgs {
    #[command(flatten)]
    zone: ZoneArgs,
    /// Also write EndpointSlices with this many ready endpoints, dealt evenly
    /// over the services (for a cluster of realistic size: `benches/memory.sh`).
    #[arg(long, default_value_t = 0)]
    endpoints: usize,
    /// Make this share of the services headless, spread evenly; they answer
    /// with their endpoints, not the address the bench upstream gives them.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    headless_share: f64,
}

#[derive(Args, Debug)]
struct UpstreamArgs {
    /// UDP and TCP address to serve on.
    #[arg(long, default_value = "127.0.0.1:5399")]
    listen: SocketAddr,
    /// UDP threads (SO_REUSEPORT sockets).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer at most this many queries per second; drop the rest.
    #[arg(long, value_name = "QPS")]
    rate_cap: Option<u64>,
    /// TTL of NXDOMAIN answers outside the cluster domain (SOA TTL and MINIMUM).
    #[arg(long, default_value_t = 60)]
    neg_ttl: u32,
    #[command(flatten)]
    zone: ZoneArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// DNS server to load (UDP, or TCP with --tcp). Without it, --start-upstream
    /// is the target.
    #[arg(long)]
    server: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = Kind::Hit)]
    workload: Kind,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many lookups (or the duration, whichever comes first).
    #[arg(long, value_name = "N")]
    queries: Option<u64>,
    /// Open loop: start this many lookups per second (a lookup is one query
    /// in hit and flood, an A+AAAA walk in k8s).
    #[arg(long, value_name = "QPS", conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: keep this many lookups in flight (the default, 100).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Send over TCP (pipelined on each connection) instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Seed of the lookup sequence: same seed, same threads, same lookups.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Load threads (each with its own sockets).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Sockets (or TCP connections) per thread.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Seconds before a query counts as timed out.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    /// Warm the server with one pass over the hit names first: yes for hit
    /// (or a mix with hit), no otherwise.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    warm: Option<bool>,

    /// Start the bench upstream in this process (on --upstream-listen). It is
    /// the target unless --server is given, and its counters go in the report.
    #[arg(long)]
    start_upstream: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    upstream_listen: SocketAddr,
    /// Rate cap of the in-process upstream (queries per second; the rest dropped).
    #[arg(long, value_name = "QPS")]
    upstream_rate_cap: Option<u64>,
    /// Read query counts from a bench upstream running elsewhere (its address).
    #[arg(long, value_name = "ADDR")]
    upstream_stats: Option<SocketAddr>,
    /// NXDOMAIN TTL of the in-process upstream.
    #[arg(long, default_value_t = 60)]
    neg_ttl: u32,

    /// Names of the zone used by hit (the first N).
    #[arg(long, default_value_t = 1000)]
    hit_names: usize,
    /// Zipf exponent of name popularity (k8s).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Fraction of k8s lookups asking for a cluster service.
    #[arg(long, default_value_t = 0.3)]
    cluster_share: f64,
    /// The node's search domains, after the cluster ones (repeatable).
    #[arg(long = "host-domain", default_value = "compute.internal")]
    host_domains: Vec<String>,
    /// ndots of the pods' resolv.conf.
    #[arg(long, default_value_t = 5)]
    ndots: u8,
    /// Zone whose random subdomains the flood workload asks.
    #[arg(long, default_value = "flood.example")]
    flood_zone: String,
    /// Mix a second workload in: WORKLOAD:FRACTION of lookups (e.g. hit:0.5).
    #[arg(long, value_name = "WORKLOAD:FRACTION", value_parser = parse_mix)]
    mix: Option<(Kind, f64)>,
    #[command(flatten)]
    zone: ZoneArgs,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("{f} is not within [0, 1]"));
    }
    Ok(f)
}

fn parse_mix(s: &str) -> Result<(Kind, f64), String> {
    use clap::ValueEnum;
    let (k, f) = s.split_once(':').ok_or("expected WORKLOAD:FRACTION, e.g. hit:0.5")?;
    let kind = Kind::from_str(k, true).map_err(|_| format!("unknown workload {k:?} (hit, k8s, flood)"))?;
    let frac: f64 = f.parse().map_err(|_| format!("fraction {f:?} is not a number"))?;
    if !(0.0..=1.0).contains(&frac) {
        return Err(format!("fraction {frac} is not within [0, 1]"));
    }
    Ok((kind, frac))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Upstream(a)) => serve_upstream(a),
        Some(Command::ClusterState(c)) => {
            let extra = zone::ClusterExtra {
                endpoints: c.endpoints,
                headless_share: c.headless_share,
            };
            print!("{}", zone::cluster_state_yaml(&c.zone.spec(), &extra));
            Ok(())
        }
        None => run(cli.run),
    }
}

fn serve_upstream(a: UpstreamArgs) -> Result<()> {
    let up = Upstream::start(&UpstreamSpec {
        listen: a.listen,
        threads: a.threads,
        rate_cap: a.rate_cap,
        zone: a.zone.spec(),
        neg_ttl: a.neg_ttl,
    })
    .context("starting the bench upstream")?;
    eprintln!(
        "nodens-bench upstream: {} on {} (UDP x{}, TCP), {} external names, {}x{} services{}",
        env!("CARGO_PKG_VERSION"),
        up.addr,
        a.threads.max(1),
        a.zone.names,
        a.zone.namespaces,
        a.zone.services,
        a.rate_cap.map(|c| format!(", capped at {c} qps")).unwrap_or_default()
    );
    up.wait();
    Ok(())
}

fn secs(what: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e6) {
        bail!("{what} = {s}: must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn run(a: RunArgs) -> Result<()> {
    let duration = secs("--duration", a.duration)?;
    let timeout = secs("--timeout", a.timeout)?;
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate = {r}: must be a positive number of lookups per second");
        }
    }
    if a.concurrency == Some(0) {
        bail!("--concurrency = 0: at least one lookup must be in flight");
    }
    if a.threads == 0 || a.threads > 64 {
        bail!("--threads = {}: must be within 1..=64", a.threads);
    }
    if a.sockets == 0 || a.sockets > 32 {
        bail!("--sockets = {}: must be within 1..=32", a.sockets);
    }
    let wl = Workload::new(WorkloadSpec {
        kind: a.workload,
        mix: a.mix,
        zone: a.zone.spec(),
        hit_names: a.hit_names,
        zipf: a.zipf,
        cluster_share: a.cluster_share,
        host_domains: a.host_domains.clone(),
        ndots: a.ndots,
        flood_zone: a.flood_zone.clone(),
    })
    .context("building the workload")?;

    let local_upstream = if a.start_upstream {
        let up = Upstream::start(&UpstreamSpec {
            listen: a.upstream_listen,
            threads: 1,
            rate_cap: a.upstream_rate_cap,
            zone: a.zone.spec(),
            neg_ttl: a.neg_ttl,
        })
        .context("starting the in-process upstream")?;
        if !a.json {
            eprintln!("in-process upstream on {}", up.addr);
        }
        Some(up)
    } else {
        None
    };
    let server = match (a.server, &local_upstream) {
        (Some(s), _) => s,
        (None, Some(up)) => up.addr,
        (None, None) => bail!("no target: give --server ADDR, or --start-upstream to load the bench upstream itself"),
    };
    // The in-process upstream is read directly; another one over DNS.
    let read_counts = |addr: Option<SocketAddr>| -> Result<Option<upstream::Counts>> {
        match (&local_upstream, addr) {
            (_, Some(addr)) => Ok(Some(
                upstream::fetch_counts(addr).context("reading the upstream's counters")?,
            )),
            (Some(up), None) => Ok(Some(up.counts())),
            (None, None) => Ok(None),
        }
    };
    let stats_addr = a.upstream_stats;
    let counted_addr = stats_addr.or(local_upstream.as_ref().map(|u| u.addr));

    let pace = match (a.rate, a.concurrency) {
        (Some(rate), _) => Pace::Open { rate },
        (None, c) => Pace::Closed {
            concurrency: c.unwrap_or(100),
        },
    };
    let spec = LoadSpec {
        server,
        tcp: a.tcp,
        pace,
        duration: Some(duration),
        max_lookups: a.queries,
        timeout,
        threads: a.threads,
        sockets: a.sockets,
    };

    let warm_list = wl.warm_targets();
    let warm = a.warm.unwrap_or(!warm_list.is_empty());
    let warmup = if warm && !warm_list.is_empty() {
        // One pass, closed loop, not measured: every hit name enters the cache.
        let chunks: Vec<Vec<_>> = split(warm_list, a.threads);
        let warm_spec = LoadSpec {
            pace: Pace::Closed {
                concurrency: 50 * chunks.len(),
            },
            duration: None,
            max_lookups: None,
            ..spec.clone()
        };
        let mut chunks = chunks.into_iter();
        let st = load::run(&warm_spec, &wl, |_| Source::List {
            targets: chunks.next().unwrap_or_default(),
            at: 0,
        })
        .context("warm-up pass")?;
        let sum = |f: fn(&load::ClassStats) -> u64| st.classes.iter().map(f).sum::<u64>();
        let w = Warmup {
            sent: sum(|c| c.sent),
            answered: sum(|c| c.answered),
            noerror: sum(|c| c.rcodes[0]),
        };
        if !a.json {
            eprintln!(
                "warm-up: {} sent, {} answered, {} NOERROR",
                w.sent, w.answered, w.noerror
            );
        }
        Some(w)
    } else {
        None
    };

    let before = read_counts(stats_addr)?;
    let seed = a.seed;
    let stats = load::run(&spec, &wl, |t| Source::random(wl.clone(), seed, t)).context("load run")?;
    let upstream_counts = match (counted_addr, before, read_counts(stats_addr)?) {
        (Some(addr), Some(before), Some(after)) => Some((addr.to_string(), after.since(&before))),
        _ => None,
    };

    let classes: Vec<&str> = wl.classes().iter().map(|k| k.name()).collect();
    let setup = Setup {
        server: server.to_string(),
        workload: a.workload.name().to_owned(),
        mix: a.mix.map(|(k, f)| format!("{}:{f}", k.name())),
        transport: if a.tcp { "tcp" } else { "udp" }.to_owned(),
        mode: match pace {
            Pace::Open { .. } => "open",
            Pace::Closed { .. } => "closed",
        }
        .to_owned(),
        rate: a.rate,
        concurrency: match pace {
            Pace::Closed { concurrency } => Some(concurrency),
            Pace::Open { .. } => None,
        },
        threads: a.threads,
        sockets: a.sockets,
        timeout_s: a.timeout,
        seed,
    };
    let report = Report::build(setup, &stats, &classes, warmup, upstream_counts);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", report.render());
    }
    if let Some(up) = local_upstream {
        up.stop();
    }
    Ok(())
}

/// Deals `items` round-robin into `n` lists.
fn split<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    let len = out.len();
    for (i, x) in items.into_iter().enumerate() {
        out[i % len].push(x);
    }
    out
}
