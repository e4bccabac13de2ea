//! deploy/observability (issue 8): every nodens metric the Grafana dashboard
//! and the Prometheus rules use is one a running agent exports on /metrics.

use std::collections::BTreeSet;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use nodens::config::SourceKind;

use crate::support::server::{self, eventually, http_get, metric, Nodens};
use crate::support::upstream::{build_query, udp_exchange, FakeUpstream};

const DASHBOARD: &str = include_str!("../../deploy/observability/grafana-dashboard.json");
const RULES: &str = include_str!("../../deploy/observability/prometheus-rules.yaml");
const CONVERGE: Duration = Duration::from_secs(10);

/// Every `nodens_*` name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("nodens_") {
        let preceded = text.len() - rest.len() + i;
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer identifier (e.g. `x_nodens_y`).
        let standalone = text[..preceded]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if standalone {
            out.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    out
}

/// The strings under every `expr` (and templating `query`) key, at any depth.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if k == "expr" || k == "query" || k == "definition" => {
                        out.push(s.clone())
                    }
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

fn yaml_exprs(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("expr"), serde_yaml_ng::Value::String(s)) => out.push(s.clone()),
                    _ => yaml_exprs(v, out),
                }
            }
        }
        serde_yaml_ng::Value::Sequence(a) => a.iter().for_each(|v| yaml_exprs(v, out)),
        _ => {}
    }
}

/// What /metrics exports: every sample's name, and each family's type.
struct Exported {
    samples: BTreeSet<String>,
    types: Vec<(String, String)>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut samples = BTreeSet::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut parts = t.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.push((name.to_string(), kind.to_string()));
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exported { samples, types }
    }

    fn has_type(&self, name: &str, kind: Option<&str>) -> bool {
        self.types
            .iter()
            .any(|(n, k)| n == name && kind.is_none_or(|want| k == want))
    }

    /// `name` is a family or a sample; `x_bucket`, `x_sum`, `x_count` count
    /// when `x` is a histogram.
    fn exports(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.has_type(name, None) {
            return true;
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(|base| self.has_type(base, Some("histogram")))
    }
}

fn referenced() -> BTreeSet<String> {
    let mut exprs = Vec::new();
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    json_exprs(&dashboard, &mut exprs);
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(RULES).expect("the rules are YAML");
    yaml_exprs(&rules, &mut exprs);
    exprs.iter().flat_map(|e| names(e)).collect()
}

#[test]
fn the_name_scan_finds_names_and_nothing_else() {
    let got = names(r#"sum(rate(nodens_a_total{x="nodens"}[5m])) / x_nodens_no + nodens_b_bucket"#);
    assert_eq!(got, BTreeSet::from(["nodens_a_total".into(), "nodens_b_bucket".into()]));
    let exported = Exported::parse(
        "# TYPE nodens_h histogram\nnodens_h_bucket{le=\"1\"} 0\n# TYPE nodens_c counter\nnodens_c 1\n",
    );
    assert!(exported.exports("nodens_h_bucket") && exported.exports("nodens_h_count"));
    assert!(exported.exports("nodens_c"));
    assert!(!exported.exports("nodens_c_count"), "only a histogram has _count");
    assert!(!exported.exports("nodens_d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_use_is_exported() {
    let want = referenced();
    for name in [
        "nodens_responses_total",
        "nodens_upstream_packets_total",
        "nodens_shortcut_walks_total",
        "nodens_hub_source_staleness_seconds",
        "nodens_dropped_total",
        "nodens_upstream_shed_total",
        "nodens_stale_answers_total",
        "nodens_request_duration_seconds_bucket",
    ] {
        assert!(
            want.contains(name),
            "the dashboard or the rules should use {name}; they use {want:?}"
        );
    }

    let up = FakeUpstream::start_example().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, include_str!("fixtures/cluster.yaml")).unwrap();
    let mut config = server::config(&[up.addr()]);
    config.cluster.source = SourceKind::Static;
    config.cluster.static_file = Some(path);
    config.search.domains = vec!["example.net".into()];
    let nodens = Nodens::start(config).await;
    let admin = nodens.admin;
    assert!(
        eventually(CONVERGE, || async move { http_get(admin, "/readyz").await.0 == 200 }).await,
        "nodens never became ready"
    );

    // Labelled families appear once they have a child: one search-path walk
    // (a name outside the cluster asked under the pod's namespace) makes
    // nodens_shortcut_walks_total appear.
    let q = build_query("www.example.com.default.svc.cluster.local.", RecordType::A, None);
    udp_exchange(nodens.dns, &q, Duration::from_secs(3))
        .await
        .expect("an answer to the walked name");
    let walked = eventually(CONVERGE, || async move {
        let text = http_get(admin, "/metrics").await.1;
        text.lines().any(|l| l.starts_with("nodens_shortcut_walks_total{"))
    })
    .await;
    assert!(walked, "no search-path walk was counted");

    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metric(&text, "nodens_cluster_services").is_some_and(|n| n > 0.0),
        "the static cluster index is loaded"
    );
    let exported = Exported::parse(&text);
    let missing: Vec<&String> = want.iter().filter(|n| !exported.exports(n)).collect();
    assert!(
        missing.is_empty(),
        "deploy/observability uses metrics nodens does not export: {missing:?}\nexported: {:?}",
        exported.types
    );
    // A misspelt name would be caught.
    assert!(!exported.exports("nodens_responses_totl"));
    nodens.stop().await;
}
