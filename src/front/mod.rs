//! The fronts: sockets in, answers out. They call the pipeline and own
//! nothing of DNS semantics.

pub mod tcp;
pub mod udp;
