//! Starts a whole nodens in-process on ephemeral loopback ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use nodens::app::{App, Running};
use nodens::config::Config;
use nodens::reload::ConfigSource;

/// A config for tests: loopback listener and admin on port 0, one worker,
/// short upstream timeout, the given upstreams (never the machine's
/// resolv.conf), no cluster source.
pub fn config(upstreams: &[SocketAddr]) -> Config {
    let mut c = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        admin: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    c.upstream.servers = upstreams.to_vec();
    c.upstream.timeout = Duration::from_millis(300);
    // Tests of the cluster zone set their own source; the rest test without one.
    c.cluster.source = nodens::config::SourceKind::None;
    c
}

/// A running nodens; stop it with `stop` (or drop it and let the test end).
pub struct Nodens {
    running: Option<Running>,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
}

impl Nodens {
    /// Builds and spawns the app on the current (multi-thread) runtime.
    pub async fn start(config: Config) -> Nodens {
        Nodens::spawn(App::build(config).expect("nodens builds"))
    }

    /// Like `start`, with reloads reading `source` (a config file).
    pub async fn start_reloading(config: Config, source: ConfigSource) -> Nodens {
        Nodens::spawn(App::build(config).expect("nodens builds").reload_from(source))
    }

    fn spawn(app: App) -> Nodens {
        let running = app.spawn().expect("nodens spawns");
        let dns = running.dns_addrs()[0];
        let admin = running.admin_addr();
        Nodens {
            running: Some(running),
            dns,
            admin,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Starts with `config(upstreams)`.
    pub async fn with_upstreams(upstreams: &[SocketAddr]) -> Nodens {
        Nodens::start(config(upstreams)).await
    }

    /// Drains and stops; returns whether the drain finished within the grace period.
    pub async fn stop(mut self) -> bool {
        self.running.take().expect("running").shutdown().await
    }
}

/// GET `path` from the admin server; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin connects");
    let req = format!("GET {path} HTTP/1.1\r\nHost: nodens\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line of the Prometheus text, e.g.
/// `metric(&text, r#"nodens_responses_total{rcode="NOERROR",source="cache"}"#)`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// Polls `f` until it returns true or `timeout` passes (for values that
/// converge asynchronously, such as metrics flushed by a worker).
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port free for both UDP and TCP on 127.0.0.1, for a nodens process
/// whose port the test must know before it starts.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes (for state
/// another task converges, such as an index a source fills).
pub async fn holds_within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
