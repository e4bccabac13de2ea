//! The node side of a DaemonSet install: what a node agent sets up on its
//! host besides its sockets, and tears down only when told to.
//!
//! Owns: the dummy interface holding the link-local listen address (`iface`,
//! netlink), the conntrack bypass for DNS to and from it (`notrack`, one
//! nftables table or one iptables chain per hook, owned by nodens; the table
//! is written over NETLINK_NETFILTER by `nftnl`, with no `nft` binary), and the
//! per-process admin endpoint that the kubelet's probes use while two agents
//! share the node's network namespace during a rolling update (`admin`), and
//! the late join of a starting agent's sockets to their port groups
//! (`handover`).
//! Must not: run on the query path, touch any interface, table or chain it
//! did not create, or remove the interface on exit: the next agent of a
//! rolling update binds beside the old one on the same address, so the
//! address must outlive every single agent (`nodens teardown` removes it).
//!
//! Everything here is idempotent: a setup that finds its interface, address
//! or rules already there reuses them, so an agent restarted after a crash
//! (or two agents starting at once) converges on one copy of each.

pub mod admin;
pub mod handover;
pub mod iface;
pub mod nftnl;
pub mod notrack;

use std::net::IpAddr;

use crate::config::{Config, NodeConfig};

/// Errors setting up or tearing down the node's interface and rules.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("netlink: {op}: {source}")]
    Netlink { op: String, source: std::io::Error },
    /// A NETLINK_NETFILTER request (`nftnl`): which message, the kernel's errno.
    #[error("nftables: {op}: {source}")]
    Nftables { op: String, source: std::io::Error },
    #[error("{tool}: {message}")]
    Firewall { tool: &'static str, message: String },
}

/// Creates (or reuses) the interface and its addresses, then installs the
/// NOTRACK rules for every listen port on those addresses. Call before binding.
pub async fn setup(config: &Config) -> Result<(), NodeError> {
    let node = &config.node;
    iface::ensure(&node.interface, &node.addresses).await?;
    tracing::info!(interface = %node.interface, addresses = ?node.addresses, "link-local interface ready");
    let targets = notrack_targets(config);
    if let Some(backend) = notrack::Backend::choose(node.notrack)? {
        notrack::install(backend, &targets)?;
        tracing::info!(?backend, ?targets, "conntrack bypass (NOTRACK) installed");
    }
    Ok(())
}

/// Removes the interface (with its addresses) and the NOTRACK rules; what is
/// already gone is not an error.
pub async fn teardown(node: &NodeConfig) -> Result<(), NodeError> {
    let removed = iface::remove(&node.interface).await?;
    tracing::info!(interface = %node.interface, removed, "link-local interface removed");
    for backend in notrack::Backend::available() {
        notrack::remove(backend)?;
    }
    tracing::info!("conntrack bypass (NOTRACK) removed");
    Ok(())
}

/// The (address, port) pairs that get NOTRACK rules: each listen address
/// that is one of the interface's addresses.
pub fn notrack_targets(config: &Config) -> Vec<(IpAddr, u16)> {
    let mut targets: Vec<(IpAddr, u16)> = config
        .listen
        .iter()
        .filter(|l| config.node.addresses.contains(&l.ip()))
        .map(|l| (l.ip(), l.port()))
        .collect();
    targets.sort();
    targets.dedup();
    targets
}
