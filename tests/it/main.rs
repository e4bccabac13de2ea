//! Integration tests: each starts the whole app on ephemeral loopback ports
//! with real sockets and talks to it over UDP/TCP, against an in-process
//! authoritative upstream (support::upstream).

mod admin;
mod bench;
mod cache;
mod cluster_watch;
mod cluster_zone;
mod config;
mod deploy;
mod glibc;
mod guard;
mod hub;
mod hub_tls;
mod node_iface;
mod observability;
mod protection;
mod reload;
mod shortcut;
mod smoke;
mod support;
mod truncation;
mod upgrade;
mod upstream_faults;
