//! The admin endpoints as a DaemonSet pod needs them: two agents share the
//! node's network namespace during a rolling update (hostNetwork, `maxSurge:
//! 1`), so the configured admin port cannot tell the kubelet which of them
//! it is probing.
//!
//! Owns: the configured admin listener (`admin`: metrics, and probes for a
//! standalone nodens) and, when `node.probe_file` is set, a second admin
//! listener on an ephemeral loopback port that only this process answers on,
//! its address written to `probe_file` (in the pod's own emptyDir, so each
//! pod's exec probe finds its own process). With `probe_file` set, a busy
//! `admin` port is not an error: it belongs to the previous agent, which is
//! still draining; this one binds it as soon as it is free (retrying every
//! `RETRY`), and releases its own early on shutdown so the next agent gets
//! it at once. `nodens probe ready|live` is the client (`probe`).
//! Must not: ever answer a probe for another process: the shared port is for
//! scrapes, the probe listener for the kubelet.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::Registry;

use crate::admin::{AdminError, AdminServer, Readiness};

/// How often a waiting agent tries the busy admin port again.
const RETRY: Duration = Duration::from_millis(250);

/// The admin listeners of one process.
#[derive(Debug)]
pub struct Admin {
    configured: SocketAddr,
    /// The configured port: bound, or None while the previous agent holds it.
    shared: Arc<Mutex<Option<AdminServer>>>,
    waiter: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    probe: Option<(AdminServer, PathBuf)>,
}

impl Admin {
    /// Binds `addr`; with `probe_file`, also the per-process probe listener
    /// (whose address is written there), and waits for a busy `addr`.
    pub fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        probe_file: Option<&Path>,
    ) -> Result<Admin, AdminError> {
        let probe = match probe_file {
            Some(path) => {
                // A file left by a previous run of this container names a dead port.
                let _ = std::fs::remove_file(path);
                let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
                let server = AdminServer::spawn(loopback, registry.clone(), readiness.clone())?;
                write_atomically(path, &format!("{}\n", server.local_addr())).map_err(|source| {
                    AdminError::Listener {
                        addr: server.local_addr(),
                        source,
                    }
                })?;
                tracing::info!(addr = %server.local_addr(), file = %path.display(), "probe listener for this process");
                Some((server, path.to_path_buf()))
            }
            None => None,
        };
        let shared = Arc::new(Mutex::new(None));
        let mut waiter = None;
        match AdminServer::spawn(addr, registry.clone(), readiness.clone()) {
            Ok(server) => *shared.lock().expect("not poisoned") = Some(server),
            Err(AdminError::Bind { source, .. })
                if probe.is_some() && source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                tracing::warn!(%addr, "admin port busy (the previous agent is draining?); binding it once it is free");
                let stop = Arc::new(AtomicBool::new(false));
                let (slot, flag) = (shared.clone(), stop.clone());
                let thread = std::thread::Builder::new()
                    .name("nodens-admin-wait".into())
                    .spawn(move || wait_for_port(addr, registry, readiness, slot, flag))
                    .map_err(|source| AdminError::Thread { source })?;
                waiter = Some((thread, stop));
            }
            Err(e) => return Err(e),
        }
        Ok(Admin {
            configured: addr,
            shared,
            waiter,
            probe,
        })
    }

    /// The bound admin address; the configured one while it is waited for.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or(self.configured, |s| s.local_addr())
    }

    /// The per-process probe listener, if `probe_file` is set.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe.as_ref().map(|(s, _)| s.local_addr())
    }

    /// Hands the shared port over to the next agent, if probes do not depend
    /// on it (`probe_file` set): returns its server for the caller to shut
    /// down (which blocks); the probe listener stays until `shutdown`.
    pub fn release_shared(&self) -> Option<AdminServer> {
        self.probe.as_ref()?;
        self.stop_waiting();
        self.shared.lock().expect("not poisoned").take()
    }

    /// Stops every listener (blocking for at most their drain grace).
    pub fn shutdown(mut self) {
        self.stop_waiting();
        if let Some((thread, _)) = self.waiter.take() {
            let _ = thread.join();
        }
        if let Some(server) = self.shared.lock().expect("not poisoned").take() {
            server.shutdown();
        }
        if let Some((server, path)) = self.probe.take() {
            let _ = std::fs::remove_file(&path);
            server.shutdown();
        }
    }

    fn stop_waiting(&self) {
        if let Some((_, stop)) = &self.waiter {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

fn wait_for_port(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    slot: Arc<Mutex<Option<AdminServer>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(RETRY);
        match AdminServer::spawn(addr, registry.clone(), readiness.clone()) {
            Ok(server) => {
                tracing::info!(%addr, "admin port free again; serving it");
                let mut slot = slot.lock().expect("not poisoned");
                if stop.load(Ordering::Relaxed) {
                    drop(slot);
                    server.shutdown();
                } else {
                    *slot = Some(server);
                }
                return;
            }
            Err(AdminError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => {
                tracing::error!(error = %e, %addr, "admin port cannot be served");
                return;
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// What `nodens probe` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `/readyz`: serving, index synced, not draining.
    Ready,
    /// `/healthz`: the process answers.
    Live,
}

/// Asks this pod's own process (the address in `probe_file`) for `probe`;
/// Ok when it answers 200 within `timeout`.
pub fn probe(probe_file: &Path, probe: Probe, timeout: Duration) -> Result<(), String> {
    let text = std::fs::read_to_string(probe_file)
        .map_err(|e| format!("reading {}: {e} (nodens not started yet?)", probe_file.display()))?;
    let addr: SocketAddr = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds {:?}, not an address", probe_file.display(), text.trim()))?;
    let path = match probe {
        Probe::Ready => "/readyz",
        Probe::Live => "/healthz",
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: nodens\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("asking {addr}{path}: {e}"))?;
    let mut response = String::new();
    stream
        .take(4096)
        .read_to_string(&mut response)
        .map_err(|e| format!("reading {addr}{path}: {e}"))?;
    let status = response.split(' ').nth(1).unwrap_or("");
    match status {
        "200" => Ok(()),
        _ => Err(format!(
            "{addr}{path}: {}",
            response.lines().next().unwrap_or("no answer")
        )),
    }
}
