//! The `nodens` binary: parses the command line, loads the config, runs the
//! app until SIGTERM/SIGINT. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nodens::config::{parse_server, Config};

/// jemalloc rather than glibc malloc: the cache's churn across worker
/// threads fragments glibc's arenas (benches/memory.sh; Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's background thread returns freed pages to the kernel on its own
/// time (after `dirty_decay_ms`), not only when another allocation happens
/// to trigger the purge: an idle agent after a burst gives its memory back.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,max_background_threads:1\0";

#[derive(Parser, Debug)]
#[command(
    name = "nodens",
    version,
    about = "Node-local DNS caching resolver for Kubernetes",
    long_about = "Node-local DNS caching resolver for Kubernetes.\n\n\
                  With no subcommand, runs `serve` and takes its flags.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The flags of `serve`, for when no subcommand is given (it is the default).
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: answer DNS on the listen addresses (the default command).
    Serve(ServeArgs),
    /// Remove the node-local interface and the NOTRACK rules `serve --setup-interface` left (uninstall).
    Teardown(TeardownArgs),
    /// Ask this pod's own agent (the address in `node.probe_file`) for /readyz or /healthz; exit 0 if 200.
    Probe(ProbeArgs),
    /// Run the hub: the one API-server watch, streamed to every node agent (`cluster.source = "hub"`).
    Hub(HubArgs),
    /// Validate a config file as a reload would (exit 0 if `serve` and SIGHUP accept it); binds nothing.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The TOML config file to check.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
struct HubArgs {
    /// TOML config file: its `[hub]` section and the `[cluster]` source keys (see config/nodens.toml).
    #[arg(long, env = "NODENS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where agents subscribe (replaces `hub.listen`).
    #[arg(long, env = "NODENS_HUB_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (replaces `hub.admin`).
    #[arg(long, env = "NODENS_HUB_ADMIN", value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Watch the API server of this kubeconfig (sets hub.source = "kubernetes"); default: in-cluster, then ~/.kube/config.
    #[arg(
        long,
        env = "NODENS_KUBECONFIG",
        value_name = "FILE",
        conflicts_with = "cluster_state"
    )]
    kubeconfig: Option<PathBuf>,
    /// Serve a `kubectl get svc,endpointslices -A -o yaml` dump instead (sets hub.source = "static").
    #[arg(long, env = "NODENS_CLUSTER_STATE", value_name = "FILE")]
    cluster_state: Option<PathBuf>,
    /// Shared secret agents must send (replaces `hub.token`).
    #[arg(
        long = "token",
        env = "NODENS_HUB_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct TeardownArgs {
    /// TOML config file naming `[node] interface` (default: the embedded defaults).
    #[arg(long, env = "NODENS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// What to ask: `ready` (/readyz) or `live` (/healthz).
    #[arg(value_parser = ["ready", "live"])]
    what: String,
    /// The file the agent wrote its probe address to (`node.probe_file`).
    #[arg(
        long,
        env = "NODENS_PROBE_FILE",
        value_name = "FILE",
        default_value = "/run/nodens/probe"
    )]
    file: PathBuf,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML config file; every key has a default (see config/nodens.toml).
    #[arg(long, env = "NODENS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to answer DNS on, UDP and TCP (repeatable; replaces `listen` from the file).
    #[arg(long, env = "NODENS_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Upstream server, "IP" or "IP:port" (repeatable; replaces `upstream.servers`).
    #[arg(long, env = "NODENS_UPSTREAM", value_name = "ADDR", value_delimiter = ',', value_parser = parse_server)]
    upstream: Vec<SocketAddr>,
    /// Admin HTTP address for /metrics, /healthz, /readyz (replaces `admin`).
    #[arg(long, env = "NODENS_ADMIN", value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Packets per second sent upstream at most (replaces `upstream.qps`).
    #[arg(long, env = "NODENS_UPSTREAM_QPS", value_name = "N")]
    upstream_qps: Option<u32>,
    /// Serve the cluster zone from a `kubectl get svc,endpointslices -A -o yaml` dump (sets cluster.source = "static").
    #[arg(long, env = "NODENS_CLUSTER_STATE", value_name = "FILE")]
    cluster_state: Option<PathBuf>,
    /// Search-path shortcut: off, nxdomain or cname (replaces `search.shortcut`).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    shortcut: Option<nodens::stage::shortcut::Mode>,
    /// A host search domain walked by the shortcut (repeatable; replaces `search.domains`).
    #[arg(long = "search-domain", value_name = "DOMAIN")]
    search_domain: Vec<String>,
    /// Pods' ndots (replaces `search.ndots`).
    #[arg(long, value_name = "N")]
    ndots: Option<u8>,
    /// Subscribe to this `nodens hub`, "IP:port" (repeatable; sets cluster.source = "hub" and `cluster.hub`).
    #[arg(long, env = "NODENS_HUB", value_name = "ADDR", value_delimiter = ',')]
    hub: Vec<SocketAddr>,
    /// Bearer token for the hub (replaces `cluster.hub_token`).
    #[arg(long, env = "NODENS_HUB_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    hub_token: Option<String>,
    /// Create the node-local interface and NOTRACK rules first (sets `node.setup_interface`; needs CAP_NET_ADMIN).
    #[arg(long, env = "NODENS_SETUP_INTERFACE")]
    setup_interface: bool,
}

fn parse_mode(s: &str) -> Result<nodens::stage::shortcut::Mode, String> {
    use nodens::stage::shortcut::Mode;
    match s {
        "off" => Ok(Mode::Off),
        "nxdomain" => Ok(Mode::Nxdomain),
        "cname" => Ok(Mode::Cname),
        _ => Err(format!("{s:?} is not a shortcut mode; use off, nxdomain or cname")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let args = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => args,
        Command::Teardown(args) => return teardown(args),
        Command::Probe(args) => return probe(args),
        Command::Hub(args) => return hub(args),
        Command::Check(args) => return check(args),
    };
    // Reloads read the file again and apply the same flags on top of it.
    let path = args.config.clone();
    let source = nodens::reload::ConfigSource::new(path, move |config| apply_flags(&args, config));
    let config = source.load()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodens-rt")
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        // First: a signal during the interface setup or a wait for the admin
        // port is then handled (after start-up), not fatal by default action.
        let mut signals = Signals::install()?;
        if config.node.setup_interface {
            // Before binding: the listen address lives on this interface.
            nodens::node::setup(&config)
                .await
                .context("setting up the node-local interface")?;
        }
        let app = nodens::app::App::build(config)?.reload_from(source);
        let running = app.spawn().context("starting workers")?;
        let reloader = running.reloader();
        let reload = move || {
            let reloader = reloader.clone();
            // Reading the file is blocking work: off the runtime's workers.
            drop(tokio::task::spawn_blocking(move || reloader.reload()));
        };
        signals.wait(reload).await;
        tracing::info!("signal received, draining");
        running.shutdown().await;
        Ok(())
    })
}

/// `nodens hub`: serve the cluster index to node agents until SIGTERM/SIGINT.
fn hub(args: HubArgs) -> anyhow::Result<()> {
    use nodens::config::SourceKind;
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.hub.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.hub.admin = admin;
    }
    if let Some(path) = args.kubeconfig {
        config.hub.source = SourceKind::Kubernetes;
        config.cluster.kubeconfig = Some(path);
    }
    if let Some(path) = args.cluster_state {
        config.hub.source = SourceKind::Static;
        config.cluster.static_file = Some(path);
    }
    if let Some(token) = args.token {
        config.hub.token = token;
    }
    config.validate_hub()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodens-hub")
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let mut signals = Signals::install()?;
        let source = nodens::hub::HubSource::from_config(&config).await?;
        let hub = nodens::hub::Hub::start(&config, source)?;
        let reload =
            || tracing::warn!("SIGHUP: nodens hub reads its config at start only; restart it to apply changes");
        signals.wait(reload).await;
        tracing::info!("signal received, stopping the hub");
        hub.shutdown().await;
        Ok(())
    })
}

/// `nodens check FILE`: what a reload would say of the file, without serving.
fn check(args: CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.file)?;
    // The default upstreams come from resolv.conf: a reload reads it too.
    config.upstream_servers()?;
    println!("{}: valid", args.file.display());
    Ok(())
}

/// `nodens teardown`: the uninstall step; the agent never removes its interface itself.
fn teardown(args: TeardownArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(nodens::node::teardown(&config.node))?;
    Ok(())
}

/// `nodens probe ready|live`: the kubelet's exec probe in the DaemonSet.
fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use nodens::node::admin::Probe;
    let what = if args.what == "ready" {
        Probe::Ready
    } else {
        Probe::Live
    };
    nodens::node::admin::probe(&args.file, what, args.timeout).map_err(anyhow::Error::msg)
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from `install` on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; calls `reload` on every SIGHUP meanwhile.
    async fn wait(&mut self, reload: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => reload(),
            }
        }
    }
}

/// The command-line flags, over the file's keys (at start and on every reload).
fn apply_flags(args: &ServeArgs, config: &mut Config) {
    use nodens::config::SourceKind;
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    if !args.upstream.is_empty() {
        config.upstream.servers = args.upstream.clone();
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(qps) = args.upstream_qps {
        config.upstream.qps = qps;
    }
    if let Some(path) = &args.cluster_state {
        config.cluster.source = SourceKind::Static;
        config.cluster.static_file = Some(path.clone());
    }
    if let Some(mode) = args.shortcut {
        config.search.shortcut = mode;
    }
    if !args.search_domain.is_empty() {
        config.search.domains = args.search_domain.clone();
    }
    if let Some(ndots) = args.ndots {
        config.search.ndots = ndots;
    }
    if !args.hub.is_empty() {
        config.cluster.source = SourceKind::Hub;
        config.cluster.hub = args.hub.clone();
    }
    if let Some(token) = &args.hub_token {
        config.cluster.hub_token = token.clone();
    }
    if args.setup_interface {
        config.node.setup_interface = true;
    }
}
