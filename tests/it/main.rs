//! Integration tests: each starts the whole app on ephemeral loopback ports
//! with real sockets and talks to it over UDP/TCP.

mod support;
