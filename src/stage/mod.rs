//! The pipeline stages, one module each, in query order: `guard`, `cache`,
//! `upstream` (DESIGN §2), with `coalesce` and `shaper` in front of the
//! upstream (DESIGN §7). Each stage owns its config and its rules.

pub mod cache;
pub mod coalesce;
pub mod guard;
pub mod shaper;
pub mod shortcut;
pub mod upstream;
