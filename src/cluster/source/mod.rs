//! Where the cluster index's changes come from, behind one shape: each
//! source is a task owning the `IndexWriter`, feeding it reduced objects and
//! marking it synced after its first complete state.
//!
//! - `static_file`: a `kubectl get svc,endpointslices -A -o yaml` dump, reloaded on change.
//! - `kubernetes`: a direct watch of the API server (small clusters; the hub uses it too).
//! - `hub`: a subscription to `nodens hub` (snapshot, then deltas).

pub mod hub;
pub mod kubernetes;
pub mod static_file;
