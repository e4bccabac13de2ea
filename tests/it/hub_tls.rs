//! TLS between `nodens hub` and its agents (`hub.tls_cert`/`hub.tls_key`,
//! `cluster.hub_ca`/`cluster.hub_server_name`), on 127.0.0.1 with a CA and
//! certificates made at test time (rcgen). An agent trusts a hub only if its
//! certificate chains to the configured CA and names the configured name;
//! anything else is a failed connection, counted, and the index is not touched.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodens::cluster::codec::Frame;
use nodens::cluster::source::hub::{HubSettings, HubTls, SubscribeError, Subscription};
use nodens::config::Config;
use nodens::hub::{Hub, HubError, HubSource};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::support::hub_agent::{start_hub, Agent};
use crate::support::kube_api::{endpoint_slice, service, FakeKubeApi};
use crate::support::server::holds_within as eventually;

const CONVERGE: Duration = Duration::from_secs(15);
const HUB_NAME: &str = "nodens-hub.kube-system.svc";

/// A CA written to `dir/<name>-ca.crt`, and a hub certificate it signed for
/// `HUB_NAME` (`dir/<name>-hub.crt`, `dir/<name>-hub.key`).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HUB_NAME.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let out = Pki {
        ca: dir.join(format!("{name}-ca.crt")),
        cert: dir.join(format!("{name}-hub.crt")),
        key: dir.join(format!("{name}-hub.key")),
    };
    std::fs::write(&out.ca, ca.pem()).unwrap();
    // The chain as a kubernetes.io/tls Secret has it: leaf, then the CA.
    std::fs::write(&out.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&out.key, leaf_key.serialize_pem()).unwrap();
    out
}

fn hub_config(tls: Option<&Pki>) -> Config {
    let mut c = Config::default();
    c.hub.listen = "127.0.0.1:0".parse().unwrap();
    c.hub.admin = "127.0.0.1:0".parse().unwrap();
    c.hub.heartbeat = Duration::from_millis(200);
    c.hub.tls_cert = tls.map(|p| p.cert.clone());
    c.hub.tls_key = tls.map(|p| p.key.clone());
    c
}

/// The agent's settings as `[cluster]` gives them: `ca` set means TLS.
fn agent_settings(hub: SocketAddr, ca: Option<&Path>, server_name: &str) -> HubSettings {
    let mut c = Config::default();
    c.cluster.hub = vec![hub];
    c.cluster.hub_timeout = Duration::from_secs(2);
    c.cluster.hub_ca = ca.map(Path::to_path_buf);
    c.cluster.hub_server_name = server_name.into();
    c.validate().expect("a valid agent config");
    HubSettings::from_config(&c.cluster)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cluster() -> Vec<serde_json::Value> {
    vec![
        service("default", "kubernetes", &["10.96.0.1"]),
        service("shop", "web", &["10.96.0.5"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_the_hub_ca_syncs_over_tls_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "good");
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(Some(&pki))).await;

    let agent = Agent::start(agent_settings(hub.listen_addr(), Some(&pki.ca), HUB_NAME));
    assert!(
        eventually(CONVERGE, || agent.index.is_synced()).await,
        "never synced over TLS"
    );
    assert!(agent.index.load().ptr.contains_key(&ip("10.96.0.5")));
    assert_eq!(agent.sessions("ok"), 1);

    api.create(service("shop", "cart", &["10.96.0.7"]));
    api.create(endpoint_slice("shop", "cart-1", "cart", &["10.1.0.7"]));
    assert!(
        eventually(CONVERGE, || agent.index.load().ptr.contains_key(&ip("10.96.0.7"))).await,
        "the change never reached the agent"
    );
    assert_eq!(agent.metrics.hub.connected.get(), 1);
    assert_eq!(hub.metrics().subscribers.get(), 1);

    // The same endpoint, directly: a snapshot over TLS, HTTP/2 by ALPN.
    let tls = HubTls {
        ca: pki.ca.clone(),
        server_name: HUB_NAME.into(),
    };
    let connector = tls.connector().unwrap();
    let mut sub = Subscription::open_with(hub.listen_addr(), None, Some(&connector), None)
        .await
        .unwrap();
    assert!(matches!(sub.next().await.unwrap().0, Frame::Snapshot(_)));
    let handshakes = &hub.metrics().tls_handshakes;
    let ok = handshakes.with_label_values(&["ok"]).get();
    assert!(ok >= 2, "the agent and the direct subscription: {ok}");
    assert_eq!(handshakes.with_label_values(&["failed"]).get(), 0);
    agent.stop().await;
    hub.shutdown().await;
}

/// Runs an agent against `hub` for a few failed attempts and checks it
/// never synced and counted every attempt as a failed session.
async fn never_syncs(what: &str, settings: HubSettings) {
    let agent = Agent::start(settings);
    assert!(
        eventually(CONVERGE, || agent.sessions("error") >= 2).await,
        "{what}: failures are counted"
    );
    assert!(!agent.index.is_synced(), "{what}: synced anyway");
    assert_eq!(agent.sessions("ok"), 0, "{what}");
    assert_eq!(agent.metrics.hub.connected.get(), 0, "{what}");
    assert!(agent.index.load().services.is_empty(), "{what}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_trusts_no_hub_but_the_one_its_ca_signed_for_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (pki(dir.path(), "good"), pki(dir.path(), "other"));
    let api = FakeKubeApi::start(cluster()).await;
    let tls_hub = start_hub(&api, &hub_config(Some(&good))).await;
    let clear_hub = start_hub(&api, &hub_config(None)).await;
    let (tls_addr, clear_addr) = (tls_hub.listen_addr(), clear_hub.listen_addr());

    // Another CA: the handshake fails on verification, with the reason.
    let wrong = HubTls {
        ca: other.ca.clone(),
        server_name: HUB_NAME.into(),
    };
    match Subscription::open_with(tls_addr, None, Some(&wrong.connector().unwrap()), None).await {
        Err(e @ SubscribeError::Handshake { .. }) => {
            let e = e.to_string();
            assert!(e.contains("certificate") && e.contains(&tls_addr.to_string()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    never_syncs("another CA", agent_settings(tls_addr, Some(&other.ca), HUB_NAME)).await;
    // The right CA, but the certificate is not for this name.
    never_syncs(
        "another name",
        agent_settings(tls_addr, Some(&good.ca), "impostor.kube-system.svc"),
    )
    .await;
    // A cleartext hub when the agent expects TLS.
    never_syncs("cleartext hub", agent_settings(clear_addr, Some(&good.ca), HUB_NAME)).await;
    // A TLS hub when the agent speaks h2c.
    never_syncs("cleartext agent", agent_settings(tls_addr, None, HUB_NAME)).await;

    // Nothing got through to the TLS hub's endpoint; the hub counted the refusals.
    let m = tls_hub.metrics();
    assert_eq!(m.requests.with_label_values(&["ok"]).get(), 0);
    assert_eq!(m.subscribers.get(), 0);
    let handshakes = |outcome: &str| m.tls_handshakes.with_label_values(&[outcome]).get();
    assert!(
        handshakes("failed") >= 4,
        "{} failed handshakes counted",
        handshakes("failed")
    );
    assert_eq!(handshakes("ok"), 0, "no client completed a handshake");
    tls_hub.shutdown().await;
    clear_hub.shutdown().await;
}

fn start_error(config: &Config) -> String {
    match Hub::start(config, HubSource::Demo) {
        Err(e @ (HubError::Tls(_) | HubError::Config(_))) => e.to_string(),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("the hub started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_config_errors_name_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "good");
    let missing = dir.path().join("missing.key");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();

    let mut c = hub_config(Some(&pki));
    c.hub.tls_key = Some(missing.clone());
    let e = start_error(&c);
    assert!(
        e.contains("hub.tls_key") && e.contains(missing.to_str().unwrap()),
        "{e}"
    );

    let mut c = hub_config(Some(&pki));
    c.hub.tls_cert = Some(garbage.clone());
    let e = start_error(&c);
    assert!(
        e.contains("hub.tls_cert") && e.contains(garbage.to_str().unwrap()),
        "{e}"
    );

    // A key that is not the certificate's.
    let other = self::pki(dir.path(), "other");
    let mut c = hub_config(Some(&pki));
    c.hub.tls_key = Some(other.key.clone());
    let e = start_error(&c);
    assert!(
        e.contains("hub.tls_key") && e.contains(other.key.to_str().unwrap()),
        "{e}"
    );

    let mut c = hub_config(Some(&pki));
    c.hub.tls_key = None;
    let e = start_error(&c);
    assert!(e.contains("hub.tls_key") && e.contains("hub.tls_cert"), "{e}");
    let mut c = hub_config(Some(&pki));
    c.hub.tls_cert = None;
    let e = start_error(&c);
    assert!(e.contains("hub.tls_cert") && e.contains("hub.tls_key"), "{e}");

    // The same from a config file.
    let e = Config::from_toml("[cluster]\nhub_server_name = \"no such name!\"", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cluster.hub_server_name") && e.contains("no such name!"),
        "{e}"
    );

    // The agent's CA bundle: missing, or not PEM.
    for ca in [dir.path().join("missing-ca.crt"), garbage] {
        let tls = HubTls {
            ca: ca.clone(),
            server_name: HUB_NAME.into(),
        };
        let e = tls.connector().unwrap_err().to_string();
        assert!(e.contains("cluster.hub_ca") && e.contains(ca.to_str().unwrap()), "{e}");
    }
}
