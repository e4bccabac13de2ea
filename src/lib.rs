//! nodens: a cluster-aware, node-local DNS caching resolver for Kubernetes.
//!
//! Layout (see docs/ARCHITECTURE.md for the whole map):
//! - `config`: the TOML file, its defaults and validation; binds nothing.
//! - `app`: build (bind) → spawn → drain.
//! - `front`: the sockets. `front::udp` owns the batched hot loop,
//!   `front::tcp` the framed, bounded TCP listener.
//! - `pipeline`: the stages in query order, and the split between the
//!   synchronous hit path and the async miss path.
//! - `stage`: one module per stage: `guard`, `cache`, `upstream`, and the
//!   upstream's protection (`coalesce`, `shaper`) and the search-path
//!   `shortcut`.
//! - `reload`: applying a changed config while serving.
//! - `wire`: zero-copy reading and writing of DNS messages on the hot path.
//! - `metrics`, `admin`: Prometheus metrics and the admin HTTP server.
//! - `hub`: `nodens hub`, the one API-server watch that streams the cluster
//!   index to every node agent.
//! - `node`: what a DaemonSet agent sets up on its host (link-local
//!   interface, NOTRACK rules, per-process probe listener).
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]
#![allow(missing_debug_implementations)]

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod front;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod reload;
pub mod stage;
pub mod wire;
