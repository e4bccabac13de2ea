//! Shared fakes and helpers for the integration tests.

pub mod upstream;
