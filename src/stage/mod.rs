//! The pipeline stages, one module each, in query order: `guard`, `cache`,
//! `upstream` (DESIGN §2). Each stage owns its config and its rules.

pub mod cache;
pub mod guard;
pub mod shortcut;
pub mod upstream;
