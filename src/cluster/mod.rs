//! The cluster zone (DESIGN §2.3, §4): Kubernetes service discovery answered
//! locally from an index of Services and EndpointSlices.
//!
//! - `model`: the objects reduced to DNS fields; what every source produces.
//! - `index`: the writer that applies changes and the snapshots queries read.
//! - `authority`: answers names under the cluster domain and the reverse
//!   zones from a snapshot, in wire format, on the hit path.
//! - `source`: where changes come from (static file, direct watch, hub).
//! - `codec`: the index's own wire format (snapshots and deltas), shared by
//!   the hub server and the `hub` source, which never depend on each other.
//!
//! Invariant: nothing here calls the network on the query path.

pub mod authority;
pub mod codec;
pub mod index;
pub mod model;
pub mod source;
