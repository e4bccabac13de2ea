//! Shared fakes and helpers for the integration tests: the upstream DNS
//! server (`upstream`), and starting nodens itself (`server`).

pub mod hub_agent;
pub mod kube_api;
pub mod server;
pub mod upstream;
