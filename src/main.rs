//! The `nodens` binary: parses the command line, loads the config, runs the
//! app until SIGTERM/SIGINT. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nodens::config::{parse_server, Config};

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
    let Command::Serve(args) = cli.command.unwrap_or(Command::Serve(cli.serve));
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if !args.upstream.is_empty() {
        config.upstream.servers = args.upstream;
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(path) = args.cluster_state {
        config.cluster.source = nodens::config::SourceKind::Static;
        config.cluster.static_file = Some(path);
    }
    if let Some(mode) = args.shortcut {
        config.search.shortcut = mode;
    }
    if !args.search_domain.is_empty() {
        config.search.domains = args.search_domain;
    }
    if let Some(ndots) = args.ndots {
        config.search.ndots = ndots;
    }
    config.validate()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodens-rt")
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let app = nodens::app::App::build(config)?;
        let running = app.spawn().context("starting workers")?;
        shutdown_signal().await?;
        tracing::info!("signal received, draining");
        running.shutdown().await;
        Ok(())
    })
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
